"""Shared fixtures: one local Ray instance per test session, one tiny world per session."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import ray

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def ray_session():
    from scaling.parallel import init_ray

    init_ray(num_cpus=2, logs=False)  # as the tools start one (local, no dashboard)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_world(ray_session, tmp_path_factory):
    """The 'tiny' preset, seed 0, rendered once for the session (read-only for tests)."""
    from scaling.world.synth import synthesize

    path = tmp_path_factory.mktemp("world") / "tiny"
    synthesize(path, preset="tiny", seed=0, progress=False)
    return path


@pytest.fixture(scope="session")
def jump_world(ray_session, tmp_path_factory):
    """The 'tiny-jump' preset (JUMP's five channels), seed 0, once for the session."""
    from scaling.world.synth import synthesize

    path = tmp_path_factory.mktemp("world") / "tiny-jump"
    synthesize(path, preset="tiny-jump", seed=0, progress=False)
    return path


def run_cli(*args, timeout=300):
    """``python -m scaling ARGS`` in a subprocess: (returncode, stdout, stderr)."""
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.pop("RAY_ADDRESS", None)
    p = subprocess.run(
        [sys.executable, "-m", "scaling", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    return p.returncode, p.stdout, p.stderr


def tb_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a TensorBoard log folder, read with TensorBoard's own reader (all the
    event files in it, as ``tensorboard --logdir`` reads one run): tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import (
        SCALARS,
        EventAccumulator,
    )

    acc = EventAccumulator(str(logdir), size_guidance={SCALARS: 0})  # 0: keep every event
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()[SCALARS]}


@pytest.fixture(scope="session")
def smoke_run(tiny_world, tmp_path_factory):
    """A real 2-worker ZeRO-2 smoke run on the tiny world (30 steps, in-training probes
    every 15), shared by the training and evaluation tests: (config, result, run dir)."""
    from pathlib import Path

    from scaling.config import load_config
    from scaling.train.pretrain import pretrain

    run_dir = tmp_path_factory.mktemp("smoke-run")
    cfg = load_config(
        Path(__file__).parent.parent / "jobs/configs/smoke.yaml",
        [
            f"data.path={tiny_world}",
            f"run.dir={run_dir}",
            "train.steps=30",
            "train.checkpoint_every=15",
            "train.val_every=15",
            "train.eval_every=15",
            f"train.checkpoint_stage_dir={tmp_path_factory.mktemp('node-local') / 'ckpt'}",
        ],
    )
    return cfg, pretrain(cfg), run_dir


@pytest.fixture(scope="session")
def tiny_ladder(tiny_world, tmp_path_factory):
    """The tiny ladder (jobs/configs/ladder-tiny.yaml) laid out as ``scaling demo --preset
    tiny --config ladder-tiny.yaml --out DIR`` lays it out, run for real in three calls:
    stopped after its first finished run, resumed, then called once more. Shared by the
    ladder test (which checks the three calls) and the demo test (whose ladder is then done).
    Returns (DIR, config, [the three calls' summaries])."""
    import shutil
    from pathlib import Path

    import pandas as pd

    from scaling.config import load_config
    from scaling.ladder.grid import ladder

    out = tmp_path_factory.mktemp("demo").resolve()
    shutil.copytree(tiny_world, out / "world")
    cfg = load_config(
        Path(__file__).parent.parent / "jobs/configs/ladder-tiny.yaml",
        ["world.preset=tiny", f"data.path={out / 'world'}", f"run.dir={out / 'ladder'}"],
    )
    quiet = dict(progress=False, log=lambda *a: None)
    first = ladder(cfg, max_runs=1, **quiet)
    done = {p.parent.name for p in (out / "ladder" / "runs").glob("*/row.json")}
    stamps = {r: (out / "ladder" / "runs" / r / "row.json").stat().st_mtime_ns for r in done}
    first_runs = pd.read_parquet(out / "ladder" / "runs.parquet")
    second = ladder(cfg, **quiet)
    third = ladder(cfg, **quiet)
    return out, cfg, [first, second, third], done, stamps, first_runs
