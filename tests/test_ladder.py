"""The ladder: its plan checked against independent arithmetic, its configuration errors
(exit 2 before Ray starts), and a real tiny ladder that is interrupted and resumed."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from scaling.config import load_config
from scaling.errors import InputError
from scaling.ladder.plan import plan_runs
from scaling.model.flops import train_flops
from scaling.model.sizes import SIZES
from tests.conftest import run_cli

TINY = Path(__file__).parent.parent / "jobs/configs/ladder-tiny.yaml"
CURATIONS = {"phenoprints": "/data/p", "random": "/data/r"}


def test_plan_steps_ids_and_configs(tmp_path):
    cfg = load_config(TINY)
    plans = plan_runs(cfg, tmp_path, CURATIONS)
    assert len(plans) == 2 * 2 * 2
    assert len({p.run_id for p in plans}) == len(plans)
    for p in plans:
        crops = cfg.data.batch_size * cfg.train.processes  # one step's crops
        steps = round(p.budget / (train_flops(SIZES[p.size], 64) * crops))
        assert p.cfg["train"]["steps"] == steps >= cfg.ladder.min_steps
        assert p.cfg["model"]["name"] == p.size
        assert p.cfg["data"]["path"] == CURATIONS[p.curation]
        assert Path(p.cfg["run"]["dir"]) == tmp_path / "runs" / p.run_id
        assert p.cfg["ladder"]["sizes"] == []  # a run is not a ladder
    assert [p.budget for p in plans] == sorted(p.budget for p in plans)
    # the fingerprint follows the configuration
    again = plan_runs(cfg, tmp_path, CURATIONS)
    assert [p.fingerprint for p in again] == [p.fingerprint for p in plans]
    other = plan_runs(load_config(TINY, ["train.lr=0.01"]), tmp_path, CURATIONS)
    assert not {p.fingerprint for p in other} & {p.fingerprint for p in plans}


def test_learning_rate_rules(tmp_path):
    sets = ["ladder.lr_rule=inverse-width", "ladder.lr_ref_width=32", "train.lr=0.004"]
    plans = plan_runs(load_config(TINY, sets), tmp_path, CURATIONS)
    for p in plans:
        assert p.cfg["train"]["lr"] == pytest.approx(0.004 * 32 / SIZES[p.size].width)
    best = tmp_path / "best.yaml"
    best.write_text("train: {lr: 0.0123, warmup: 0.25}\nmodel: {mask_ratio: 0.6}\n")
    sets = [f"ladder.best={{cpu-s: {best}}}", "ladder.lr={cpu-xs: 0.005}"]
    for p in plan_runs(load_config(TINY, sets), tmp_path, CURATIONS):
        if p.size == "cpu-s":
            assert p.cfg["train"]["lr"] == 0.0123 and p.cfg["train"]["warmup"] == 0.25
            assert p.cfg["model"]["mask_ratio"] == 0.6
        else:
            assert p.cfg["train"]["lr"] == 0.005 and p.cfg["model"]["mask_ratio"] == 0.75


def test_batch_size_per_size_sets_the_runs_batch_and_steps(tmp_path):
    cfg = load_config(TINY, ["ladder.batch_size={cpu-s: 8}"])
    for p in plan_runs(cfg, tmp_path, CURATIONS):
        batch = 8 if p.size == "cpu-s" else cfg.data.batch_size
        assert p.cfg["data"]["batch_size"] == batch
        assert p.cfg["train"]["steps"] == round(p.budget / (train_flops(SIZES[p.size], 64) * batch))


def test_budget_below_min_steps_is_refused(tmp_path):
    cfg = load_config(TINY, ["ladder.budgets=[1.0e+9]"])
    with pytest.raises(InputError, match="ladder.budgets"):
        plan_runs(cfg, tmp_path, CURATIONS)


@pytest.mark.parametrize(
    "override,key",
    [
        ("ladder.sizes=[cpu-xs, huge]", "ladder.sizes"),
        ("ladder.curations={a: {strategy: magic}}", "ladder.curations.a.strategy"),
        ("ladder.curations={a: {strategy: random, like: b}}", "ladder.curations.a.like"),
        ("ladder.budgets=[]", "ladder.budgets"),
        ("ladder.budgets=[1.0e+3]", "ladder.budgets"),
        ("ladder.lr={cpu-l: 0.1}", "ladder.lr.cpu-l"),
        ("ladder.batch_size={cpu-s: 0}", "ladder.batch_size.cpu-s"),
    ],
)
def test_bad_ladder_config_exits_2_before_ray(tmp_path, override, key):
    rc, out, err = run_cli(
        "ladder", "--config", TINY, "--set", f"run.dir={tmp_path}", "--set", override, timeout=60
    )
    assert rc == 2, err
    assert key in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "world").exists()  # nothing was made


def test_tiny_ladder_interrupted_then_resumed(tiny_ladder):
    """A real ladder (Ray Train local-mode DeepSpeed runs with WSD branches, Ray Data
    evaluation) stopped after its first finished run, cancelling the run still going; the
    rerun finishes exactly the missing runs and leaves the finished ones alone; a third
    call has nothing to do."""
    out, cfg, (first, second, third), done, stamps, first_runs = tiny_ladder
    ladder_dir = out / "ladder"
    everything = {
        f"{s}_{c}_f{b}"
        for s in ("cpu-xs", "cpu-s")
        for c in ("phenoprints", "random")
        for b in ("4e10", "8e10")
    }
    assert not first["failed"]
    # one WSD trunk finished: its own budget and the branch at the smaller one
    (trunk,) = {r.rsplit("_", 1)[0] for r in first["ran"]}
    assert sorted(first["ran"]) == [f"{trunk}_f4e10", f"{trunk}_f8e10"]
    # a run that was finishing as the ladder stopped may have finished too
    assert set(first["ran"]) <= done and len(done) < len(everything)
    assert set(first_runs.loc[first_runs["kind"] == "mae", "run_id"]) == done

    assert second["skipped"] == len(done) and not second["failed"]
    assert sorted(second["ran"]) == sorted(everything - done)
    for r, stamp in stamps.items():  # the finished runs were not redone
        assert (ladder_dir / "runs" / r / "row.json").stat().st_mtime_ns == stamp
    assert third["ran"] == [] and third["skipped"] == 8

    runs = pd.read_parquet(ladder_dir / "runs.parquet")
    metrics = pd.read_parquet(ladder_dir / "metrics.parquet")
    mae = runs[runs["kind"] == "mae"].set_index("run_id")
    assert set(mae.index) == everything
    assert set(runs.loc[runs["kind"] == "baseline", "run_id"]) == {
        "random-init_cpu-xs",
        "random-init_cpu-s",
        "handcrafted",
        "pixel-pca",
    }
    for rid, r in mae.iterrows():
        trunk_id = rid.replace("f4e10", "f8e10")
        assert r["wsd_trunk"] == trunk_id and r["schedule"] == "wsd"
        trunk_dir = ladder_dir / "runs" / trunk_id
        if rid == trunk_id:  # the trunk's own accounting
            acct = json.loads((trunk_dir / "result.json").read_text())
        else:  # the branch's, written when its cool-down ended
            branch = trunk_dir / "branches" / f"step_{int(r['steps']):06d}"
            acct = json.loads((branch / "state.json").read_text())
        assert r["flops"] == acct["flops"] and r["crops_seen"] == acct["crops_seen"]
        # the compute spent is the budget, to within half a step
        assert abs(r["flops"] - r["budget"]) <= train_flops(SIZES[r["model"]], 64) * 32 / 2 + 1
        assert 0 < r["params"] < 1e6 and r["loss"] > 0
        blocks = metrics.loc[metrics["run_id"] == rid, "block"]
        assert sorted(blocks.unique()) == list(range(1, SIZES[r["model"]].depth + 1))
    assert set(metrics["run_id"]) == set(runs["run_id"])
    assert {"recall_complex", "consistency_ks", "probe_perturbation"} <= set(metrics["metric"])


def test_a_ladder_run_killed_mid_way_resumes_from_its_mid_run_checkpoint(tiny_world, tmp_path):
    """A ladder run (local mode, in its own Ray task) checkpoints every 50 of its 300 steps.
    Its process is killed once a mid-run checkpoint exists; the ladder's retry resumes
    from that checkpoint (not step 0), finishes at 300 steps, and its row counts the
    restart and the steps trained twice."""

    from scaling.ladder.grid import ladder
    from tests.test_train import run_killing_rank0

    budget = 300 * 32 * train_flops(SIZES["cpu-xs"], 64)  # 300 steps of 32 crops
    cfg = load_config(
        TINY,
        [
            f"data.path={tiny_world}",
            f"run.dir={tmp_path}",
            "ladder.sizes=[cpu-xs]",
            "ladder.curations={all: {strategy: none}}",
            f"ladder.budgets=[{budget:.6e}]",
            "ladder.baselines=false",
            "train.checkpoint_every=50",
        ],
    )
    (plan,) = plan_runs(cfg, tmp_path, {"all": str(tiny_world)})
    assert plan.cfg["train"]["steps"] == 300 and plan.cfg["train"]["checkpoint_every"] == 50
    run_dir = Path(plan.cfg["run"]["dir"])

    def mid_run_checkpoint() -> bool:
        return any((run_dir / "checkpoints").glob("step_*"))

    run = lambda: ladder(cfg, progress=False, log=lambda *_: None)  # noqa: E731
    out = run_killing_rank0(run, mid_run_checkpoint, run_dir)
    assert out["failed"] == {} and out["ran"] == [plan.run_id]
    row = json.loads((run_dir / "row.json").read_text())
    attempts = [json.loads(x) for x in (run_dir / "attempts.jsonl").read_text().splitlines()]
    assert row["steps"] == 300 and row["restarts"] == len(attempts) - 1 == 1
    assert attempts[1]["resumed_step"] >= 50  # from the mid-run checkpoint, not from 0
    assert row["repeated_steps"] == attempts[1]["reached"] - attempts[1]["resumed_step"]
