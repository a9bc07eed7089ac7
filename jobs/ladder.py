"""One scaling ladder, as ``ray job submit`` runs it:

ray job submit --working-dir . -- python jobs/ladder.py --config jobs/configs/ladder-gpu.yaml

Rerunning the same command skips finished runs and retries failed ones.
"""

import sys

from scaling.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["ladder", *sys.argv[1:]]))
