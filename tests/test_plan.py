"""``scaling plan``: runs, time, data and checkpoints of a config on a cluster, checked
against sums made here from the FLOP model, without Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scaling.model.flops import train_flops
from scaling.model.sizes import SIZES
from tests.conftest import run_cli

ROOT = Path(__file__).parent.parent
LADDER = ROOT / "jobs" / "configs" / "ladder-gpu.yaml"
CLUSTER = ROOT / "cluster.yaml"


def ladder_trained_flops() -> float:
    """ladder-gpu.yaml by hand: per size one WSD trunk to 1e19 FLOPs (8 workers x 64
    crops a step), plus each smaller budget's cool-down (20% of its steps)."""
    total = 0.0
    for size in ("S/16", "B/8", "L/8"):
        cost = train_flops(SIZES[size], 256) * 64 * 8
        steps = {b: round(b / cost) for b in (1e17, 1e18, 1e19)}
        decays = sum(max(1, round(0.2 * steps[b])) for b in (1e17, 1e18))
        total += 2 * (steps[1e19] + decays) * cost  # two curations
    return total


@pytest.fixture(scope="module")
def ladder_plan():
    code, out, err = run_cli(
        "plan", "--config", LADDER, "--cluster", CLUSTER, "--mfu", 0.45, "--json"
    )
    assert code == 0, err
    return json.loads(out)


def test_ladder_gpu_plan_numbers(ladder_plan):
    p = ladder_plan
    assert p["kind"] == "ladder" and len(p["runs"]) == 18 and p["trained_runs"] == 6
    assert p["concurrency"] == 4  # 4 p5 nodes x 8 GPUs, 8 GPUs a run
    trained = ladder_trained_flops()
    assert p["flops_trained"] == pytest.approx(trained, rel=1e-9)
    assert p["gpu_hours"] == pytest.approx(trained / (989e12 * 0.45) / 3600, rel=1e-9)
    assert p["node_hours"] == pytest.approx(p["gpu_hours"] / 8)
    s16 = p["sizes"]["S/16"]
    crops_s = 8 * 989e12 * 0.45 / train_flops(SIZES["S/16"], 256)
    assert s16["data"]["mib_s_per_node"] == pytest.approx(crops_s * 6 * 256**2 / 2**20)
    for s in p["sizes"].values():  # Lion: weights 4 + state 4, and the safetensors 4
        assert s["checkpoint"]["total_gb"] == pytest.approx(12 * s["memory"]["params"] / 1e9)


def test_ladder_gpu_plan_text():
    code, out, err = run_cli("plan", "--config", LADDER, "--cluster", CLUSTER)
    assert code == 0, err
    for word in ("S16_random_f1e19", "4 at once", "GPU-hours", "MiB/s a node", "checkpoint"):
        assert word in out
    assert out.count("data.stage_dir /mnt/nvme/shards") == 3  # each size's data lines
    code, out, err = run_cli(
        "plan", "--config", LADDER, "--cluster", CLUSTER, "--set", "data.stage_dir="
    )
    assert code == 0 and "data.stage_dir" not in out, err


def test_sweep_plans_its_dearest_trials():
    code, out, err = run_cli("plan", "--config", ROOT / "jobs/configs/sweep-tiny.yaml", "--json")
    assert code == 0, err
    p = json.loads(out)
    assert p["kind"] == "sweep" and len(p["runs"]) == 6
    # the dearest corner of the space: batch 16, mask ratio 0.5 (most visible patches)
    trial = 20 * 16 * 2 * train_flops(SIZES["cpu-xs"], 64, mask_ratio=0.5)
    assert p["flops_trained"] == pytest.approx(6 * trial)


@pytest.mark.parametrize(
    ("config", "setting", "key"),
    [
        ("gpu-b8.yaml", "data.batch_size=512", "data.batch_size"),
        ("ladder-gpu.yaml", "train.workers=16", "train.workers"),
    ],
)
def test_plan_refuses_what_cannot_run(tmp_path, config, setting, key):
    run_dir = tmp_path / "run"
    code, out, err = run_cli(
        "plan", "--config", ROOT / "jobs/configs" / config, "--cluster", CLUSTER,
        "--set", setting, "--set", f"run.dir={run_dir}",
    )  # fmt: skip
    assert code == 2 and out == ""
    assert err.strip().splitlines()[-1].startswith(f"error: {key}:")
    assert not run_dir.exists() and list(tmp_path.iterdir()) == []
