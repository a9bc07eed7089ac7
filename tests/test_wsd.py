"""Warm-up/stable/decay runs with branches: the schedule against a closed form, and a real
branch against a separately trained run of its budget (the ladder's shared budgets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scaling.config import load_config
from scaling.errors import InputError
from scaling.model.flops import train_flops
from scaling.model.sizes import SIZES
from scaling.train.schedules import branch_start, wsd

SMOKE = Path(__file__).parent.parent / "jobs/configs/smoke.yaml"


def test_wsd_schedule_closed_form():
    f = wsd(warmup_steps=4, cooldown=0.25, min_ratio=0.0)
    assert [f(s, 40) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(f(s, 40) == 1.0 for s in range(4, 30))  # stable
    assert branch_start(40, 0.25) == 30
    assert [f(s, 40) for s in range(30, 40)] == pytest.approx(
        [(40 - s) / 10 for s in range(30, 40)]
    )
    # a branch ending at 20 follows the trunk exactly until its own decay
    assert [f(s, 20) for s in range(15)] == [f(s, 40) for s in range(15)]
    assert [f(s, 20) for s in range(15, 20)] == pytest.approx([1, 0.8, 0.6, 0.4, 0.2])


def test_branches_need_wsd_and_fit_inside_the_run():
    with pytest.raises(InputError, match="train.branches"):
        load_config(SMOKE, ["train.branches=[5]"])
    with pytest.raises(InputError, match="train.branches"):
        load_config(SMOKE, ["train.schedule=wsd", "train.branches=[25]", "train.steps=20"])


def test_branch_matches_a_separate_run_of_its_budget(tiny_world, tmp_path):
    """A 24-step WSD trunk with a branch at 12 steps against a 12-step WSD run: the branch
    ends at the same step count and compute and the same validation loss: with crops and masks
    a function of the position, a branch is exactly the run of its budget."""
    from scaling.train.pretrain import pretrain

    common = [
        f"data.path={tiny_world}",
        "train.schedule=wsd",
        "train.cooldown=0.25",
        "train.warmup=0.25",
        "train.lr=0.004",
        "train.val_every=4",
        "train.log_every=4",
    ]
    trunk_dir, alone_dir = tmp_path / "trunk", tmp_path / "alone"
    trunk = pretrain(
        load_config(
            SMOKE,
            [*common, "train.steps=24", "train.branches=[12]", "train.checkpoint_every=24"]
            + [f"run.dir={trunk_dir}"],
        )
    )
    alone = pretrain(
        load_config(
            SMOKE, [*common, "train.steps=12", "train.checkpoint_every=12", f"run.dir={alone_dir}"]
        )
    )
    branch_dir = trunk_dir / "branches" / "step_000012"
    branch = json.loads((branch_dir / "state.json").read_text())
    crops = 16 * 2
    assert branch["step"] == alone["step"] == 12
    assert branch["crops_seen"] == alone["crops_seen"] == 12 * crops
    assert branch["flops"] == alone["flops"] == 12 * crops * train_flops(SIZES["cpu-xs"], 64)
    # the trunk's own accounting excludes the branch's cool-down (restored at its start)
    assert trunk["step"] == 24 and trunk["crops_seen"] == 24 * crops
    # the same crops, masks and schedule: the branch is the run of its budget, exactly
    assert branch["val_loss"] == pytest.approx(alone["loss"], rel=1e-6)
    assert trunk["loss"] < branch["val_loss"]  # twice the steps: the trunk went further
    cfg = load_config(branch_dir / "config.yaml")  # the branch is a checkpoint of 12 steps
    assert cfg.train.steps == 12 and cfg.train.branches == []
    assert (branch_dir / "model.safetensors").is_file()


def test_delivered_flops_count_each_trained_step_once():
    """A trunk of 100 steps and its branches at 50 and 20 (cool-down 0.2): delivered compute
    is every trunk step plus each branch's own decay steps, counted step by step."""
    import pandas as pd

    from scaling.demo import delivered_flops

    per_step = 1e10
    rows = [("t", 100, "t"), ("b50", 50, "t"), ("b20", 20, "t"), ("lone", 30, None)]
    runs = pd.DataFrame(
        [
            {"run_id": r, "kind": "mae", "steps": s, "flops": s * per_step, "wsd_trunk": t}
            for r, s, t in rows
        ]
        + [{"run_id": "pixel-pca", "kind": "baseline", "steps": None, "flops": 0.0}]
    )
    by_step = 100 + 30  # the trunk and the lone run
    by_step += sum(1 for s in range(50) if s >= branch_start(50, 0.2))
    by_step += sum(1 for s in range(20) if s >= branch_start(20, 0.2))
    assert delivered_flops(runs, 0.2) == pytest.approx(by_step * per_step)
