"""Stream crops on a cluster and report throughput (what ``ray job submit`` runs):

    ray job submit --working-dir . -- python jobs/stream.py \\
        --config jobs/configs/stream.yaml --set data.path=/shared/world --montage crops.png
"""

import sys

from scaling.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["stream", *sys.argv[1:]]))
