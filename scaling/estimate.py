"""``scaling plan``: what a ladder, sweep or single run will do on a cluster, without
starting Ray or anything else.

- **Runs**: a ladder's from ``plan_runs`` (before data exists, curations as placeholders);
  a sweep's trials at the most expensive corner of ``sweep.space`` (ASHA stops many
  earlier: an upper bound); a plain config is one run.
- **Compute trained**: a run's steps x ``step_cost``; with ``ladder.share_budgets`` a
  branch only adds its cool-down steps to its trunk.
- **Time**: FLOPs / (GPUs per run x ``train.peak_tflops`` x MFU); GPU-hours are that times
  the run's GPUs; wall time is the runs list-scheduled, in the ladder's order, onto
  ``concurrency`` slots (evaluation and start-up not counted).
- **Data**: crops/s a run consumes at that speed x one uint8 crop (channels x crop^2
  bytes), times the runs a node holds, against the storage's read throughput per node.
- **Memory per GPU** (a simple model): float32 weights and gradients plus optimizer state
  (AdamW 8, Lion 4 bytes a parameter), partitioned over the workers by the ZeRO stage
  (1: optimizer, 2: + gradients, 3: + weights), plus activations of one micro-batch:
  34 x tokens x width bytes a block per sample in bf16 (Korthikanti et al. 2022, fused
  attention: no tokens^2 term; 68 in fp32), or with ``model.grad_checkpoint`` 4 bytes a
  token x width per block (the kept fp32 input) plus one block's full activations. The
  input, loss, CUDA context and workspaces are left to the headroom (10% of the GPU).
- **Checkpoints**: DeepSpeed's float32 weights and optimizer state plus rank 0's
  ``model.safetensors`` (float32); rank 0's share at the ZeRO stage.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from pathlib import Path

from scaling.capacity import Capacity, run_resources
from scaling.config import Config, apply, to_dict
from scaling.errors import InputError
from scaling.model.flops import train_flops
from scaling.model.sizes import SIZES

OPTIMIZER_BYTES = {"adamw": 8, "lion": 4}  # float32 state a parameter: (m, v) or m
SOURCES = {
    "stream": "data.source stream reads it all from storage",
    "memory": "data.source memory reads the sites once",
    "auto": "data.source auto: stream unless the sites fit data.memory_gb, then read once",
}
COST_KEYS = (  # sweep keys that change what a trial costs
    "train.steps",
    "data.batch_size",
    "data.crop",
    "model.name",
    "model.mask_ratio",
    "train.grad_accum",
    "train.workers",
)


@dataclass(frozen=True)
class Assumptions:
    """What the plan takes for what the config does not say."""

    mfu: float = 0.4  # model FLOPs utilisation of train.peak_tflops
    storage_mbps: float = 1500.0  # MiB/s a node reads (EFS elastic: per-client limit)
    gpu_memory_gb: float = 80.0  # per GPU (H100 80 GB)
    channels: int = 6  # image channels (Cell Painting)
    headroom: float = 0.9  # share of GPU memory the model may plan to use

    def validate(self) -> None:
        if not 0 < self.mfu <= 1:
            raise InputError(f"--mfu: must be in (0, 1], got {self.mfu}")
        if self.storage_mbps <= 0 or self.gpu_memory_gb <= 0:
            raise InputError("--storage-mbps and --gpu-memory-gb: must be positive")


@dataclass(frozen=True)
class Row:
    """One run (or trial) of the plan."""

    run_id: str
    size: str
    curation: str
    budget: float
    steps: int
    flops: float  # the run's own compute, to its last step
    crops: int
    trained_steps: int  # steps this row adds to the cluster's work (a branch: its cool-down)
    unit: str  # the run whose process trains this row (a WSD trunk, or itself)


def ladder_rows(cfg: Config) -> list[tuple[Row, Config]]:
    """The ladder's runs from ``plan_runs``, with curations as placeholders."""
    from scaling.ladder.grid import check_ladder
    from scaling.ladder.plan import plan_runs
    from scaling.train.schedules import branch_start

    check_ladder(cfg)
    plans = plan_runs(cfg, Path(cfg.run.dir), {n: "." for n in cfg.ladder.curations})
    out = []
    for p in plans:
        run = apply(p.cfg, {}, p.run_id)
        steps = run.train.steps
        trained = steps
        if p.trunk not in (None, p.run_id):
            trained = steps - branch_start(steps, run.train.cooldown)
        out.append((_row(run, p.run_id, p.curation, p.budget, trained, p.trunk), run))
    return out


def _row(run: Config, run_id: str, curation: str, budget: float, trained: int, unit) -> Row:
    t = run.train
    crops = run.data.batch_size * t.processes * t.grad_accum * t.steps
    return Row(
        run_id,
        run.model.name,
        curation,
        budget,
        t.steps,
        flops_per_crop(run) * crops,
        crops,
        trained,
        unit or run_id,
    )


def flops_per_crop(cfg: Config, channels: int = 6) -> float:
    """Training FLOPs of one crop (``scaling.model.flops.train_flops``)."""
    size = SIZES[cfg.model.name]
    return float(train_flops(size, cfg.data.crop, channels, cfg.model.mask_ratio))


def sweep_rows(cfg: Config) -> list[tuple[Row, Config]]:
    """``sweep.trials`` trials at the dearest values ``sweep.space`` can take."""
    from scaling.sweep.tune import _spec_values, check_space
    from scaling.train.pretrain import check_run

    space = check_space(cfg)
    check_run(cfg)
    keys = [k for k in COST_KEYS if k in space]
    base, corners = to_dict(cfg), []
    for values in itertools.product(*(_spec_values(k, space[k])[1] for k in keys)):
        corner = apply(base, dict(zip(keys, values, strict=True)), "sweep.space")
        check_run(corner)
        corners.append(corner)
    dear = max(corners, key=lambda c: flops_per_crop(c) * c.data.batch_size * c.train.steps)
    return [
        (_row(dear, f"trial_{i}", "-", 0.0, dear.train.steps, None), dear)
        for i in range(cfg.sweep.trials)
    ]


def single_rows(cfg: Config) -> list[tuple[Row, Config]]:
    from scaling.train.pretrain import check_run

    check_run(cfg)
    return [(_row(cfg, Path(cfg.run.dir).name, "-", 0.0, cfg.train.steps, None), cfg)]


def check_cluster(cfg: Config, cap: Capacity, where: str) -> None:
    """Runs do not span nodes (the plan keeps a run on one node's NVLink; spanning runs
    over EFA are not planned yet): one node must hold a run."""
    cpus, gpus = run_resources(cfg)
    t = cfg.train
    if t.use_gpu and gpus > cap.gpus_per_node:
        raise InputError(
            f"train.workers: {t.workers} GPUs a run{where}, but a node of {cap.source} has "
            f"{cap.gpus_per_node:g} (runs do not span nodes)"
        )
    if not cap.per_node(cpus, gpus):
        raise InputError(
            f"train.cpus_per_worker: a run{where} needs {cpus:g} CPUs on one node, but a node "
            f"of {cap.source} has at most {cap.cpus_per_node:g}"
        )


def memory_gb(cfg: Config) -> dict:
    """GB per GPU of one run: model states at its ZeRO stage, and activations."""
    import torch

    from scaling.model.mae import MAE, visible_patches

    size, t = SIZES[cfg.model.name], cfg.train
    with torch.device("meta"):
        params = MAE(size, img_size=cfg.data.crop).param_counts()["total"]
    n = t.processes if t.processes > 1 else 1
    stage = t.zero_stage if n > 1 else 0  # one process runs stage 0 (scaling.train.engine)
    w, g, o = 4.0, 4.0, float(OPTIMIZER_BYTES[t.optimizer])
    states = {0: w + g + o, 1: w + g + o / n, 2: w + (g + o) / n, 3: (w + g + o) / n}[stage]
    patches = (cfg.data.crop // size.patch) ** 2
    blocks = [
        (size.depth, visible_patches(patches, cfg.model.mask_ratio) + 1, size.width),
        (size.dec_depth, patches + 1, size.dec_width),
    ]
    act = activation_bytes(blocks, cfg.data.batch_size, cfg.train.precision, cfg.model)
    return {
        "params": params,
        "device": "GPU" if t.use_gpu else "process",
        "zero_stage": stage,
        "states_gb": params * states / 1e9,
        "activations_gb": act / 1e9,
        "total_gb": (params * states + act) / 1e9,
    }


def activation_bytes(blocks, batch: int, precision: str, model) -> float:
    """Activations of one micro-batch over ``blocks`` ((count, tokens, width) each)."""
    full = 34.0 if precision == "bf16" else 68.0  # bytes a token x width in one block
    per_block = [batch * tokens * width for _, tokens, width in blocks]
    if not model.grad_checkpoint:
        return sum(full * n * e for (n, _, _), e in zip(blocks, per_block, strict=True))
    kept = sum(4.0 * n * e for (n, _, _), e in zip(blocks, per_block, strict=True))
    return kept + full * max(per_block)


def checkpoint_gb(cfg: Config, params: int) -> dict:
    """One checkpoint: DeepSpeed's float32 weights and optimizer state, and rank 0's
    ``model.safetensors``; rank 0's share of it at the ZeRO stage."""
    t = cfg.train
    n = t.processes if t.processes > 1 else 1
    stage = t.zero_stage if n > 1 else 0
    w, o = 4.0 * params, float(OPTIMIZER_BYTES[t.optimizer]) * params
    rank0 = (w / n if stage == 3 else w) + (o / n if stage >= 1 else o) + w
    return {
        "total_gb": (2 * w + o) / 1e9,
        "rank0_gb": rank0 / 1e9,
        "kept_gb": t.keep_checkpoints * (2 * w + o) / 1e9,
    }


def check_memory(cfg: Config, mem: dict, a: Assumptions, key: str) -> None:
    limit = a.gpu_memory_gb * a.headroom
    if cfg.train.use_gpu and mem["total_gb"] > limit:
        raise InputError(
            f"{key}: {cfg.model.name} at micro-batch {cfg.data.batch_size} needs "
            f"~{mem['total_gb']:.0f} GB a GPU at ZeRO-{mem['zero_stage']} (states "
            f"{mem['states_gb']:.0f}, activations {mem['activations_gb']:.0f}), over "
            f"{limit:.0f} of {a.gpu_memory_gb:g} GB; lower it, raise train.zero_stage or "
            "set model.grad_checkpoint"
        )


def rows_of(cfg: Config) -> tuple[str, list[tuple[Row, Config]]]:
    """What the config is (ladder, sweep or run) and its rows."""
    if cfg.ladder.active:
        return "ladder", ladder_rows(cfg)
    if cfg.sweep.space:
        return "sweep", sweep_rows(cfg)
    return "run", single_rows(cfg)


def concurrency(kind: str, cfg: Config, cap: Capacity) -> int:
    """Runs at once on ``cap``, as the ladder or the sweep will count them."""
    if kind == "ladder":
        from scaling.ladder.grid import concurrency as ladder_concurrency

        return ladder_concurrency(cfg, cap)
    if kind == "sweep":
        from scaling.sweep.tune import check_fits
        from scaling.sweep.tune import concurrency as sweep_concurrency

        check_fits(cfg, cap)
        return min(sweep_concurrency(cfg, cap), cfg.sweep.trials)
    return 1


def makespan(hours: list[float], slots: int) -> float:
    """Wall hours of jobs taking ``hours``, started in order on the first free of
    ``slots`` (as the ladder's queue does)."""
    free = [0.0] * max(1, slots)
    for h in hours:
        i = free.index(min(free))
        free[i] += h
    return max(free)


def size_summary(run: Config, cap: Capacity, a: Assumptions, key: str) -> dict:
    """Per size: memory a GPU, checkpoint sizes, and the data a node reads."""
    mem = memory_gb(run)
    check_memory(run, mem, a, key)
    out = {"memory": mem, "checkpoint": checkpoint_gb(run, mem["params"])}
    t = run.train
    if t.use_gpu:
        crops_s = t.workers * t.peak_tflops * 1e12 * a.mfu / flops_per_crop(run, a.channels)
        per_node = cap.per_node(*run_resources(run))
        crop_bytes = a.channels * run.data.crop**2
        out["data"] = {
            "source": run.data.source,
            "stage_dir": run.data.stage_dir,
            "crops_per_s": crops_s,
            "runs_per_node": per_node,
            "mib_s_per_node": crops_s * crop_bytes * per_node / 2**20,
            "crop_bytes": crop_bytes,
        }
    return out


def plan(cfg: Config, cap: Capacity, a: Assumptions | None = None) -> dict:
    """The whole plan as one JSON-able dict; InputError when it cannot run on ``cap``."""
    a = a or Assumptions()
    a.validate()
    kind, rows = rows_of(cfg)
    sizes: dict[str, dict] = {}
    for row, run in rows:
        if row.size not in sizes:
            check_cluster(run, cap, f" of {row.size}")
            key = f"ladder.batch_size.{row.size}" if row.size in cfg.ladder.batch_size else ""
            sizes[row.size] = size_summary(run, cap, a, key or "data.batch_size")
    gpus = float(cfg.train.workers) if cfg.train.use_gpu else 0.0
    units: dict[str, float] = {}
    for row, _ in rows:
        trained = row.flops * row.trained_steps / row.steps
        units[row.unit] = units.get(row.unit, 0.0) + trained
    trained = sum(units.values())
    at_once = concurrency(kind, cfg, cap)
    out = {
        "kind": kind,
        "cluster": {
            **asdict(cap),
            "cpus": cap.cpus,
            "gpus": cap.gpus,
            "gpus_per_node": cap.gpus_per_node,
            "text": cap.describe(),
        },
        "assumptions": asdict(a),
        "runs": [asdict(r) for r, _ in rows],
        "trained_runs": len(units),
        "concurrency": at_once,
        "gpus_per_run": gpus,
        "peak_tflops": cfg.train.peak_tflops,
        "flops_trained": trained,
        "sizes": sizes,
    }
    if gpus:
        speed = cfg.train.peak_tflops * 1e12 * a.mfu  # FLOP/s a GPU
        out["gpu_hours"] = trained / speed / 3600
        out["wall_hours"] = makespan([f / (gpus * speed) / 3600 for f in units.values()], at_once)
        out["node_hours"] = out["gpu_hours"] / cap.gpus_per_node
    return out


def render(p: dict, config: str) -> str:
    """The plan as text: the runs, then time, data, memory and checkpoints per size."""
    c, a = p["cluster"], p["assumptions"]
    lines = [f"plan of {config} ({p['kind']}) on {c['text']}"]
    lines += run_table(p["runs"])
    lines.append(
        f"{p['trained_runs']} trained runs, {p['concurrency']} at once; "
        f"{p['flops_trained']:.3g} FLOPs trained (a WSD branch adds only its cool-down)"
    )
    if "gpu_hours" in p:
        lines += [
            f"time at {a['mfu']:.0%} MFU of {p['peak_tflops']:g} TFLOP/s: "
            f"{p['gpu_hours']:.1f} GPU-hours ({p['node_hours']:.1f} node-hours of "
            f"{c['gpus_per_node']:g} GPUs),",
            f"  wall {p['wall_hours']:.1f} h ({p['gpus_per_run']:g} GPUs a run, "
            f"{p['concurrency']} at once; evaluation and start-up not counted)",
        ]
    else:
        lines.append("time: not estimated (no GPUs: train.use_gpu is false)")
    for size, s in p["sizes"].items():
        lines += size_lines(size, s, a)
    return "\n".join(lines)


def run_table(runs: list[dict]) -> list[str]:
    head = f"  {'run':26s} {'size':6s} {'curation':12s} {'budget':>8s} {'steps':>8s} "
    lines = [head + f"{'FLOPs':>9s} {'crops':>10s}"]
    for r in runs:
        lines.append(
            f"  {r['run_id']:26s} {r['size']:6s} {r['curation']:12s} {budget(r['budget']):>8s} "
            f"{r['steps']:8d} {r['flops']:9.3g} {r['crops']:10.3g}"
            + ("" if r["unit"] == r["run_id"] else f"  (branch of {r['unit']})")
        )
    return lines


def budget(b: float) -> str:
    return f"{b:.3g}" if b else "-"


def size_lines(size: str, s: dict, a: dict) -> list[str]:
    m, k = s["memory"], s["checkpoint"]
    lines = [
        f"{size}: {m['params'] / 1e6:.1f}M parameters; memory a {m['device']} "
        f"~{m['total_gb']:.1f} GB at ZeRO-{m['zero_stage']} (states {m['states_gb']:.1f}, "
        f"activations {m['activations_gb']:.1f})"
        + (f" of {a['gpu_memory_gb']:g} GB" if m["device"] == "GPU" else ""),
        f"  checkpoint {k['total_gb']:.2f} GB (rank 0 writes {k['rank0_gb']:.2f}), "
        f"{k['kept_gb']:.2f} GB kept",
    ]
    d = s.get("data")
    if d:
        short = d["mib_s_per_node"] / a["storage_mbps"]
        verdict = f"{short:.1f}x what it gives" if short > 1 else "within it"
        runs = f"{d['runs_per_node']} run{'s' * (d['runs_per_node'] != 1)} a node"
        lines += [
            f"  data: {d['crops_per_s']:,.0f} crops/s a run x {d['crop_bytes']:,} B, {runs}: "
            f"{d['mib_s_per_node']:,.0f} MiB/s a node",
            f"    against {a['storage_mbps']:,.0f} MiB/s assumed: {verdict}",
            f"    ({SOURCES[d['source']]})",
        ]
        if d["stage_dir"]:
            lines.append(
                f"    (data.stage_dir {d['stage_dir']}: the first pass reads storage, each "
                "later pass the node's own copy)"
            )
    return lines
