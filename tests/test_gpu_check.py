"""The one-shot GPU check (``benchmarks/gpu_check.sh``, ``scaling bench gpu``): its dry mode
runs all three steps for real on the CPU, and without CUDA the real mode refuses in one line."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scaling.bench import run_bench
from scaling.bench.gpu import bf16_peak
from tests.conftest import run_cli

ROOT = Path(__file__).parent.parent
CASES = [
    "L/8 train FLOP/s, flash SDPA",
    "L/8 MFU, flash SDPA",
    "S/16 pretrain steady",
    "S/16 pretrain with a mid-run checkpoint",
    "S/16 resume from the mid-run checkpoint",
    "embed every block",
    "evaluate (embed + benchmarks)",
]


def finite(v) -> bool:
    return isinstance(v, int | float) and math.isfinite(v) and v > 0


def test_peaks_by_device_name():
    assert bf16_peak("NVIDIA H200") == 989e12 and bf16_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert bf16_peak("NVIDIA H100 PCIe") == 756e12 and bf16_peak("NVIDIA L40S") == 362e12
    assert bf16_peak("NVIDIA A100-SXM4-80GB") == 312e12 and bf16_peak("NVIDIA L4") == 121e12
    assert bf16_peak("Quadro RTX 6000") is None


def test_dry_run_measures_every_figure_and_resumes_to_the_target(tiny_world, ray_session):
    """``scaling bench gpu --dry`` in this process (the session's Ray and tiny world): one
    line a figure, every figure positive and finite, MFU null on the CPU (no known peak)
    with its ratio to the measured GEMM still given, and the resumed run at its target step
    with the crops of the straight run."""
    rows = [
        json.loads(json.dumps(r, allow_nan=False)) for r in run_bench("gpu", str(tiny_world), True)
    ]
    assert [r["case"] for r in rows] == CASES
    by = {r["case"]: r for r in rows}
    for r in rows:
        assert r["bench"] == "gpu" and r["dry"] is True and r["unit"] and r["anchor"]
        assert r["device"].startswith("cpu") and r["value"] == r["ours"]
        assert finite(r["ratio"]), r
        if r["case"] != "L/8 MFU, flash SDPA":
            assert finite(r["ours"]) and finite(r["anchor_value"]), r
    mfu = by["L/8 MFU, flash SDPA"]
    assert mfu["ours"] is None and mfu["anchor_value"] is None and mfu["peak"] == "unknown"
    assert mfu["ratio"] == pytest.approx(mfu["achieved_flops"] / mfu["gemm_flops"])
    flops = by["L/8 train FLOP/s, flash SDPA"]
    assert flops["model"] == "cpu-2xs" and flops["ours"] == mfu["achieved_flops"]
    resumed = by["S/16 resume from the mid-run checkpoint"]
    assert resumed["ok"] is True and resumed["step"] == resumed["target"] == 10
    assert resumed["resumed_from"] == 5 and resumed["zero_stage"] == 2
    for case in CASES[2:5]:
        assert by[case]["precision"] == "bf16" and finite(by[case]["steps_per_s"])
    assert by["embed every block"]["wells"] > 0 and by["embed every block"]["tiles"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_without_cuda_the_real_check_exits_2_in_one_line():
    """``benchmarks/gpu_check.sh`` (no ``--dry``) on a machine without CUDA: exit 2, one
    line on stderr, nothing on stdout, no traceback; ``--dry`` belongs to ``gpu`` alone."""
    env = {**os.environ, "PYTHON": sys.executable}
    p = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().count("\n") == 0 and "Traceback" not in p.stderr
    assert p.stderr.startswith("error: bench gpu: no CUDA device") and "--dry" in p.stderr
    code, _, err = run_cli("bench", "flops", "--dry", timeout=120)
    assert code == 2 and err.startswith("error: --dry:")
