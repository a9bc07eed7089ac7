"""One Ray Tune sweep, as ``ray job submit`` runs it:

ray job submit --working-dir . -- python jobs/sweep.py --config jobs/configs/sweep-tiny.yaml
"""

import sys

from scaling.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["sweep", *sys.argv[1:]]))
