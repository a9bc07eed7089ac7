"""``scaling ladder``: the grid of sizes x curations x budgets, each run pretrained and then
evaluated at every block, gathered into ``runs.parquet`` and ``metrics.parquet``.

Layout under ``run.dir``::

    world/                      the synthetic world, when data.path is unset
    curations/{name}/           each curation of the data (reused when unchanged)
    baselines/                  random-init of every size, hand-crafted, pixel PCA (scored once)
    runs/{run_id}/              one pretraining run (Ray storage, result.json), its eval/,
                                row.json when finished, error.txt when its last attempt failed
    runs.parquet                one row a run: run_id, model, params (encoder), curation,
                                crops_seen, flops, loss, kind (mae | baseline), depth, ...
    metrics.parquet             run_id, block, metric, value

Idempotent and resumable: a run whose ``row.json`` carries its configuration's fingerprint
is done and skipped; any other run is (re)started, and a run interrupted mid-training
resumes from its latest checkpoint (Ray Train V2 restores from the same storage). Runs go
out as Ray tasks, as many at once as the cluster holds. The tables are rewritten after
every run, so they are complete up to the last run that finished.
"""

from __future__ import annotations

import json
import math
import os
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from scaling.capacity import Capacity, detect, run_resources
from scaling.config import Config, apply, dump_config, to_dict
from scaling.errors import InputError
from scaling.ladder.plan import RunPlan, plan_runs, size_values
from scaling.model.sizes import SIZES
from scaling.progress import bar

RUN_CPU = 0.01  # the task that drives one run: Train workers and Ray Data hold their own


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def write_parquet(path: Path, df: pd.DataFrame) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def encoder_params(size: str, crop: int) -> int:
    import torch

    from scaling.model.mae import MAE

    with torch.device("meta"):
        return MAE(SIZES[size], img_size=crop).param_counts()["encoder"]


def check_ladder(cfg: Config) -> None:
    """Everything that can be checked before data is read or resources are requested."""
    from scaling.train.pretrain import check_run

    ld = cfg.ladder
    for key in ("sizes", "curations", "budgets"):
        if not getattr(ld, key):
            raise InputError(f"ladder.{key}: empty (a ladder needs sizes, curations and budgets)")
    for size in ld.sizes:
        check_run(apply(to_dict(cfg), size_values(cfg, size), f"ladder ({size})"))


def prepare_curations(cfg: Config, world: str, ladder_dir: Path, log) -> dict[str, str]:
    """Each curation's data folder: made under ``curations/``, reused when its recipe and
    source are unchanged. ``strategy: none`` is the whole dataset."""
    from scaling.curate.select import curate

    ld, out, info = cfg.ladder, {}, {}
    order = sorted(ld.curations, key=lambda n: "like" in ld.curations[n])  # `like` goes last
    for name in order:
        spec = dict(ld.curations[name])
        strategy = spec.pop("strategy")
        if strategy == "none":
            out[name] = world
            continue
        like = spec.pop("like", None)
        if like is not None:
            spec["wells_count"] = info[like]["wells"]
        folder = ladder_dir / "curations" / name
        done = folder / "curation.json"
        if done.is_file():
            old = json.loads(done.read_text())
            same = old["strategy"] == strategy and old["params"] == spec
            if same and old["source"] == str(Path(world).resolve()):
                info[name], out[name] = old, str(folder)
                log(f"curation {name}: reusing {folder} ({old['wells']} wells)")
                continue
        info[name] = curate(world, strategy, folder, seed=cfg.data.seed, overwrite=True, **spec)
        out[name] = str(folder)
        log(f"curation {name}: {info[name]['wells']} of {info[name]['source_wells']} wells")
    return {n: out[n] for n in ld.curations}


def train_trunk(plan: RunPlan) -> dict:
    """Pretrain ``plan`` unless its result is already there (a rerun after a failed
    evaluation); an interrupted run resumes from its latest checkpoint."""
    from scaling.train.pretrain import pretrain

    cfg = apply(plan.cfg, {}, plan.run_id)
    path = Path(cfg.run.dir) / "result.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    if result.get("step") != cfg.train.steps or result.get("fingerprint") != plan.fingerprint:
        result = {**pretrain(cfg), "fingerprint": plan.fingerprint}
        write_json(path, result)
    return result


def run_group(
    trunk: RunPlan,
    members: list[RunPlan],
    world: str,
    eval_batch_size: int,
    eval_cpus: float | None = None,
):
    """Train a trunk run, then evaluate every block of each member not yet done (the trunk
    itself, and with shared budgets its WSD branches) and write each member's row.
    ``eval_cpus``: the embedding actor's CPUs and threads (``eval_share``)."""
    from scaling.evaluate.embed import load_spec
    from scaling.evaluate.evaluate import evaluate_models

    t0 = time.perf_counter()
    result = train_trunk(trunk)
    train_s = time.perf_counter() - t0
    trunk_dir = Path(trunk.cfg["run"]["dir"])
    rows = []
    for m in members:
        if is_done(m):
            continue
        run_dir = Path(m.cfg["run"]["dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        steps = m.cfg["train"]["steps"]
        if m.run_id == trunk.run_id:
            ckpt, acct = trunk_dir, {**result, "val_loss": result["loss"]}
        else:  # a WSD branch of the trunk, written by the training loop
            ckpt = trunk_dir / "branches" / f"step_{steps:06d}"
            acct = {**json.loads((ckpt / "state.json").read_text()), "restarts": 0}
            acct["repeated_steps"] = 0  # the trunk's row carries its restarts
        t1 = time.perf_counter()
        summary = evaluate_models(
            {"mae": load_spec(ckpt)},
            world,
            run_dir / "eval",
            batch_size=eval_batch_size,
            cpus_per_actor=eval_cpus,
            overwrite=True,
            progress=False,
            info={"run_id": m.run_id, "checkpoint": str(ckpt)},
        )["mae"]
        row = {
            "run_id": m.run_id,
            "model": m.size,
            "params": encoder_params(m.size, m.cfg["data"]["crop"]),
            "curation": m.curation,
            "crops_seen": int(acct["crops_seen"]),
            "flops": float(acct["flops"]),
            "loss": float(acct["val_loss"]),
            "kind": "mae",
            "depth": SIZES[m.size].depth,
            "budget": m.budget,
            "budget_unit": m.cfg["ladder"]["budget_unit"],
            "steps": int(acct["step"]),
            "lr": m.cfg["train"]["lr"],
            "schedule": trunk.cfg["train"]["schedule"],
            "wsd_trunk": m.trunk,  # the shared run this one is a branch (or the end) of
            "best_block": summary["best_block"],
            "recall_complex": summary.get("recall_complex", float("nan")),
            "restarts": int(acct["restarts"]),
            "repeated_steps": int(acct.get("repeated_steps", 0)),
            "train_s": round(train_s, 1),
            "eval_s": round(time.perf_counter() - t1, 1),
            "fingerprint": m.fingerprint,
        }
        write_json(run_dir / "row.json", row)
        (run_dir / "error.txt").unlink(missing_ok=True)
        rows.append(row)
    return rows


def groups(plans: list[RunPlan]) -> list[tuple[RunPlan, list[RunPlan]]]:
    """Units of work: each run alone, or a WSD trunk with the budgets that branch off it."""
    by_id = {p.run_id: p for p in plans}
    out: dict[str, list[RunPlan]] = {}
    for p in plans:
        out.setdefault(p.trunk or p.run_id, []).append(p)
    return [(by_id[t], members) for t, members in out.items()]


def is_done(plan: RunPlan) -> bool:
    row = Path(plan.cfg["run"]["dir"]) / "row.json"
    return row.is_file() and json.loads(row.read_text()).get("fingerprint") == plan.fingerprint


def baselines(cfg: Config, world: str, ladder_dir: Path, log) -> None:
    """Random-init of every size, hand-crafted features and pixel PCA, scored once."""
    from scaling.evaluate.embed import ModelSpec
    from scaling.evaluate.evaluate import evaluate_models

    out = ladder_dir / "baselines"
    key = {"sizes": cfg.ladder.sizes, "crop": cfg.data.crop, "world": str(Path(world).resolve())}
    done = out / "summary.json"
    if done.is_file() and json.loads(done.read_text()).get("key") == key:
        log(f"baselines: reusing {out}")
        return
    base = to_dict(cfg)
    specs = {
        f"random-init_{s}": ModelSpec(apply(base, {"model.name": s}), None, cfg.train.seed)
        for s in cfg.ladder.sizes
    }
    log(f"baselines: {', '.join(specs)}, handcrafted, pixel-pca")
    evaluate_models(
        specs,
        world,
        out,
        features=True,
        batch_size=cfg.ladder.eval_batch_size,
        cpus_per_actor=eval_share(cfg),
        overwrite=True,
        progress=False,
        info={"key": key},
    )


def concurrency(cfg: Config, cap: Capacity | None = None) -> int:
    """``ladder.max_concurrent``, or as many runs as the cluster's shape holds at once
    (``scaling.capacity``; default: the shape of the cluster this process drives): each
    takes its workers' CPUs (and GPUs) and one Ray Data task's CPUs."""
    if cfg.ladder.max_concurrent:
        return cfg.ladder.max_concurrent
    return (cap or detect()).runs_at_once(*run_resources(cfg))


def eval_share(cfg: Config, cap: Capacity | None = None) -> float | None:
    """The CPUs (and torch threads) of a run's embedding actor on a cluster without GPUs:
    the run's share of the cores, so that runs evaluating beside runs training never ask
    the cores for more threads than they have (on 2 cores, beside a 1-thread training run,
    a 2-thread actor embedded 2.4x slower than a 1-thread one, measured). None where there
    are GPUs: a GPU actor, placed as ``scaling evaluate`` places it."""
    cap = cap or detect()
    if cap.gpus:
        return None
    return float(max(1, math.floor(min(cap.cpus / concurrency(cfg, cap), cap.cpus_per_node))))


def tables(cfg: Config, plans: list[RunPlan], ladder_dir: Path) -> tuple[int, int]:
    """``runs.parquet`` and ``metrics.parquet`` from every finished run and the baselines."""
    rows, frames = [], []
    for p in plans:
        if not is_done(p):
            continue
        run_dir = Path(p.cfg["run"]["dir"])
        rows.append(json.loads((run_dir / "row.json").read_text()))
        m = pd.read_parquet(run_dir / "eval" / "metrics.parquet")
        frames.append(m[m["model"] == "mae"].assign(run_id=p.run_id))
    b = ladder_dir / "baselines"
    if cfg.ladder.baselines and (b / "metrics.parquet").is_file():
        m = pd.read_parquet(b / "metrics.parquet")
        summary = json.loads((b / "summary.json").read_text())
        for name in m["model"].unique():
            size = name.removeprefix("random-init_")
            sized = size in SIZES
            rows.append(
                {
                    "run_id": name,
                    "model": size if sized else name,
                    "params": encoder_params(size, cfg.data.crop) if sized else 0,
                    "curation": "none",
                    "crops_seen": 0,
                    "flops": 0.0,
                    "loss": float("nan"),
                    "kind": "baseline",
                    "depth": SIZES[size].depth if sized else 1,
                    "best_block": summary[name]["best_block"],
                    "recall_complex": summary[name].get("recall_complex", float("nan")),
                }
            )
            frames.append(m[m["model"] == name].assign(run_id=name))
    runs = pd.DataFrame(rows)
    metrics = (
        pd.concat(frames)[["run_id", "block", "metric", "value"]]
        if frames
        else pd.DataFrame({"run_id": [], "block": [], "metric": [], "value": []})
    )
    if len(runs):
        write_parquet(ladder_dir / "runs.parquet", runs)
        write_parquet(ladder_dir / "metrics.parquet", metrics.reset_index(drop=True))
    return int((runs.get("kind") == "mae").sum()) if len(runs) else 0, len(metrics)


def grid_view(plans: list[RunPlan], states: dict[str, str]) -> str:
    """One line per size x curation, one cell per budget: done (recall at b*), or state."""
    budgets = sorted({p.budget for p in plans})
    cells: dict[tuple[str, str], list[str]] = {}
    for p in plans:
        row = cells.setdefault((p.size, p.curation), [""] * len(budgets))
        state = states.get(p.run_id, "pending")
        if state == "done":
            r = json.loads((Path(p.cfg["run"]["dir"]) / "row.json").read_text())
            state = f"{r['recall_complex']:.3f} b{r['best_block']}"
        row[budgets.index(p.budget)] = state
    unit = plans[0].cfg["ladder"]["budget_unit"] if plans else "flops"
    head = f"{'size':8s} {'curation':12s} " + " ".join(f"{b:>11.3g}" for b in budgets)
    lines = [f"budget ({unit}); cells: complex recall at the best block", head]
    for (size, cur), row in cells.items():
        lines.append(f"{size:8s} {cur:12s} " + " ".join(f"{c:>11s}" for c in row))
    return "\n".join(lines)


def ladder(cfg: Config, max_runs: int | None = None, progress: bool = True, log=print) -> dict:
    """Run the grid; returns counts and the tables' paths. Exit status 1 (via the caller)
    when a run failed after its retries: rerunning retries exactly those. ``max_runs``
    stops once that many runs have finished, cancelling the runs still going (a rerun
    resumes them from their checkpoints)."""

    from scaling.parallel import init_ray
    from scaling.train.pretrain import prepare_data

    check_ladder(cfg)
    ladder_dir = Path(cfg.run.dir).resolve()
    ld = cfg.ladder
    # every budget's step count is checked before any data is made
    plan_runs(cfg, ladder_dir, {n: "." for n in ld.curations})
    ladder_dir.mkdir(parents=True, exist_ok=True)
    (ladder_dir / "ladder.yaml").write_text(dump_config(cfg))
    init_ray(logs=False)  # the runs' own output stays in Ray's logs; the grid view leads
    world = str(Path(prepare_data(cfg)).resolve())
    curations = prepare_curations(cfg, world, ladder_dir, log)
    plans = plan_runs(cfg, ladder_dir, curations)
    states = {p.run_id: "done" for p in plans if is_done(p)}
    todo = [p for p in plans if p.run_id not in states]
    log(f"ladder: {len(plans)} runs, {len(states)} already done, {len(todo)} to run")

    # the baselines are scored beside the first runs, in a thread of this process (which
    # holds the hand-crafted features the phenoprints curation computed)
    with ThreadPoolExecutor(1, thread_name_prefix="baselines") as pool:
        scored = pool.submit(baselines, cfg, world, ladder_dir, log) if ld.baselines else None
        out = run_plans(cfg, plans, todo, states, world, ladder_dir, max_runs, progress, log)
        if scored is not None:
            scored.result()
    n_runs, n_metrics = tables(cfg, plans, ladder_dir)
    log(grid_view(plans, states))
    return {
        "runs": len(plans),
        **out,
        "skipped": len(plans) - len(todo),
        "runs_parquet": str(ladder_dir / "runs.parquet"),
        "metrics_parquet": str(ladder_dir / "metrics.parquet"),
        "rows": n_runs,
        "metric_rows": n_metrics,
    }


def run_plans(cfg, plans, todo, states, world, ladder_dir, max_runs, progress, log) -> dict:
    """Train and evaluate the runs of ``todo`` as Ray tasks, ``concurrency`` at a time, with
    retries; updates ``states`` and the tables. Returns {"ran", "failed", "wall_s"}."""
    import ray

    ld = cfg.ladder
    tables(cfg, plans, ladder_dir)
    n, share = concurrency(cfg), eval_share(cfg)
    # in local mode (train.workers 0) the task trains with ceil(cpus_per_worker) threads
    # but asks Ray for a sliver only, so that its evaluation's actors can be placed
    # a fresh process per run (max_calls=1): torch.distributed and DeepSpeed keep state
    task = ray.remote(num_cpus=RUN_CPU, max_retries=0, max_calls=1)(run_group)
    work = [(t, [m for m in ms if m.run_id not in states]) for t, ms in groups(plans)]
    queue = [(t, ms) for t, ms in work if ms]
    attempts = {t.run_id: 0 for t, _ in queue}
    running, failed, ran = {}, {}, []
    t0 = time.perf_counter()
    with bar(total=len(todo), desc="ladder", unit="run", enabled=progress) as b:
        while queue or running:
            while queue and len(running) < n:
                t, ms = queue.pop(0)
                attempts[t.run_id] += 1
                states.update({m.run_id: "running" for m in ms})
                running[task.remote(t, ms, world, ld.eval_batch_size, share)] = (t, ms)
            ready, _ = ray.wait(list(running), num_returns=1)
            t, ms = running.pop(ready[0])
            try:
                rows = ray.get(ready[0])
            except Exception as e:  # a run failed: note it, retry or move on
                err = "".join(traceback.format_exception(e))
                run_dir = Path(t.cfg["run"]["dir"])
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "error.txt").write_text(err)
                if attempts[t.run_id] <= ld.retries:
                    log(f"{t.run_id}: failed (attempt {attempts[t.run_id]}), retrying")
                    queue.append((t, [m for m in ms if not is_done(m)]))
                    continue
                for m in ms:
                    if is_done(m):
                        states[m.run_id] = "done"
                        continue
                    states[m.run_id], failed[m.run_id] = "failed", str(run_dir / "error.txt")
                    log(f"{m.run_id}: FAILED, see {run_dir / 'error.txt'}")
                b.update(len(ms))
                continue
            tables(cfg, plans, ladder_dir)
            b.update(len(ms))
            for row in rows:
                states[row["run_id"]] = "done"
                ran.append(row["run_id"])
                log(
                    f"{row['run_id']}: loss {row['loss']:.4f}, {row['flops']:.3g} FLOPs, "
                    f"complex recall {row['recall_complex']:.3f} at block "
                    f"{row['best_block']}/{row['depth']} ({row['train_s']:.0f} s train, "
                    f"{row['eval_s']:.0f} s eval)"
                )
            if max_runs is not None and len(ran) >= max_runs:
                for ref, (_, rest) in running.items():  # stop: these resume on the next call
                    ray.cancel(ref, force=True)
                    states.update({m.run_id: "stopped" for m in rest})
                queue, running = [], {}
    return {"ran": ran, "failed": failed, "wall_s": round(time.perf_counter() - t0, 1)}
