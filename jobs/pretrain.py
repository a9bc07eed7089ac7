"""One pretraining run, as ``ray job submit`` runs it:

ray job submit --working-dir . -- python jobs/pretrain.py --config jobs/configs/smoke.yaml
"""

import sys

from scaling.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["pretrain", *sys.argv[1:]]))
