#!/usr/bin/env bash
# The one-shot GPU check (issue 13, item 8): `scaling bench gpu --json` on one CUDA GPU, in
# under 8 minutes. One JSON line a figure on stdout (logs on stderr):
#   1. L/8 bf16 training FLOP/s with flash SDPA (anchor: SDPA's math backend) and its MFU
#      against the GPU's bf16 dense peak (anchor: a dense bf16 GEMM measured in the same run);
#   2. a bf16 ZeRO-2 S/16 pretrain of a small synthetic world with a mid-run checkpoint, and
#      a resume from it that must reach the target step (anchor: a plain PyTorch loop);
#   3. embedding and evaluation of the resulting checkpoint (anchor: the bare forward passes).
# Usage: benchmarks/gpu_check.sh [--dry] [--data DIR]
#   --dry      the same three steps on the CPU with tiny stand-ins (a minute or two)
#   --data DIR a dataset with sites of at least 128 px (default: a fresh 'small' world)
# Exit 0 when every figure came out, 1 when the resume missed its target or a step failed,
# 2 without a CUDA device (and without --dry). PYTHON picks the interpreter (default: the
# project's .venv, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export RAY_DATA_DISABLE_PROGRESS_BARS=1
exec "$PYTHON" -m scaling bench gpu --json "$@"
