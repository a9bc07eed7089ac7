"""``scaling sweep``: a real Ray Tune + ASHA sweep of tiny DeepSpeed runs on the session Ray."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import pytest

from scaling.config import load_config
from scaling.errors import InputError
from tests.conftest import run_cli

CONFIG = Path(__file__).parent.parent / "jobs/configs/sweep-tiny.yaml"


def _rows(run_dir: Path) -> list[dict]:
    with (run_dir / "trials.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny_sweep(tiny_world, tmp_path_factory):
    from scaling.sweep.tune import sweep

    run_dir = tmp_path_factory.mktemp("sweep")
    cfg = load_config(
        CONFIG,
        [f"data.path={tiny_world}", f"run.dir={run_dir}", "sweep.trials=4", "train.steps=15"],
    )
    t0 = time.perf_counter()
    r = sweep(cfg)
    return cfg, r, run_dir, time.perf_counter() - t0


def test_sweep_trials_asha_tensorboard_best(tiny_sweep):
    cfg, r, run_dir, _ = tiny_sweep
    rows = _rows(run_dir)
    assert r["trials"] == len(rows) == 4
    assert len({row["trial_id"] for row in rows}) == 4
    assert all(row["status"] == "TERMINATED" for row in rows)
    steps = [int(row["steps"]) for row in rows]
    assert max(steps) == 15
    # ASHA stopped at least one trial at a rung (5 or 10 steps of 15)
    early = [row for row in rows if row["stopped_early"] == "True"]
    assert early and r["stopped_early"] == len(early)
    assert all(int(row["steps"]) < 15 for row in early)

    # TensorBoard event files for every trial
    trial_dirs = [p for p in (run_dir / "tune").iterdir() if p.is_dir()]
    ids = {row["trial_id"] for row in rows}
    with_events = {
        d.name
        for d in trial_dirs
        if any(d.glob("events.out.tfevents*"))
        for i in ids
        if i in d.name
    }
    assert len(with_events) == 4

    # best: the best final val_loss among the trials that ran every step
    finished = [row for row in rows if int(row["steps"]) == 15]
    best = min(finished, key=lambda row: float(row["val_loss"]))
    assert r["best"]["trial_id"] == best["trial_id"]
    assert math.isclose(r["best"]["val_loss"], float(best["val_loss"]))
    b = load_config(run_dir / "best.yaml")
    for col, value in best.items():
        if col.startswith("param."):
            section, key = col.removeprefix("param.").split(".")
            got = getattr(getattr(b, section), key)
            assert math.isclose(float(got), float(value)), col
    assert b.data.path == str(Path(cfg.data.path).resolve())
    assert b.run.dir == str(run_dir / "best")
    assert b.train.steps == 15


def test_sweep_tensorboard_scalars_per_trial(tiny_sweep):
    """What ``tensorboard --logdir run.dir`` shows of a sweep, read with TensorBoard's own
    reader: Tune's ``ray/tune/<metric>`` per trial under ``tune/`` (by report number; every
    report), and each trial's own ``train/<metric>`` by step under ``trials/<id>/tensorboard``
    with the same values; nothing in a TensorBoard folder shared by the trials."""
    from tests.conftest import tb_scalars

    _, _, run_dir, _ = tiny_sweep
    assert not (run_dir / "tensorboard").exists()
    for row in _rows(run_dir):
        steps = list(range(5, int(row["steps"]) + 1, 5))  # val_every = log_every = 5
        (tune_dir,) = [d for d in (run_dir / "tune").iterdir() if row["trial_id"] in d.name]
        tune = tb_scalars(tune_dir)
        reports = list(range(1, len(steps) + 1))
        assert tune["ray/tune/step"] == list(zip(reports, steps, strict=True))
        assert [n for n, _ in tune["ray/tune/val_loss"]] == reports
        assert [n for n, _ in tune["ray/tune/loss"]] == reports
        assert tune["ray/tune/val_loss"][-1][1] == pytest.approx(float(row["val_loss"]))

        own = tb_scalars(run_dir / "trials" / row["trial_id"] / "tensorboard")
        by_step = dict(zip(steps, (v for _, v in tune["ray/tune/val_loss"]), strict=True))
        if int(row["steps"]) == 15:  # ran to the end: every report, the last one too
            assert [s for s, _ in own["train/val_loss"]] == steps
            assert [s for s, _ in own["train/lr"]] == steps
        for s, v in own.get("train/val_loss", []):  # stopped early: up to where ASHA stopped
            if s in by_step:
                assert v == pytest.approx(by_step[s], rel=1e-6)


def test_sweep_resume_keeps_finished_trials(tiny_sweep):
    from scaling.sweep.tune import sweep

    cfg, r, run_dir, first = tiny_sweep
    before = _rows(run_dir)
    t0 = time.perf_counter()
    again = sweep(cfg)
    took = time.perf_counter() - t0
    assert again["restored"]
    assert _rows(run_dir) == before
    assert again["best"] == r["best"]
    assert took < first / 2


def test_sweep_bad_space_key(tmp_path):
    rc, out, err = run_cli(
        "sweep",
        "--config",
        CONFIG,
        "--set",
        f"run.dir={tmp_path}",
        "--set",
        "sweep.space.train.lrate={uniform: [0.1, 0.2]}",
        timeout=60,
    )
    assert rc == 2
    assert "train.lrate" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "tune").exists() and not (tmp_path / "world").exists()


def test_sweep_space_checks():
    from scaling.sweep.tune import check_space

    cfg = load_config(CONFIG)
    assert set(check_space(cfg)) >= {"train.lr", "train.weight_decay", "model.mask_ratio"}
    with pytest.raises(InputError, match="model.mask_ratio"):
        check_space(load_config(CONFIG, ["sweep.space.model.mask_ratio={uniform: [0.5, 1.5]}"]))
    with pytest.raises(InputError, match="train.log_every"):
        check_space(load_config(CONFIG, ["train.log_every=3"]))
