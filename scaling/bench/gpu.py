"""``scaling bench gpu``: the one-shot GPU check (issue 13, item 8), one JSON line a figure.

On one CUDA GPU, in one process, in a few minutes (under 8 on an H100/H200 by design):

1. **L/8 training FLOP/s and MFU with flash attention.** A plain loop of the L/8 MAE of
   ``jobs/configs/gpu-l8.yaml`` (256 px crops, batch 64 a GPU, mask 0.75, Lion) on random
   uint8 crops on the GPU, under bf16 autocast, attention forced onto SDPA's flash kernel
   (``SDPBackend.FLASH_ATTENTION``). FLOP/s = the analytic training FLOPs of
   ``scaling.model.flops.train_flops`` (ARCHITECTURE section 4) per second of the timed
   steps (after warm-up, synchronised). Anchor: the same steps in the same process on SDPA's
   math backend (the unfused softmax(Q K^T) V that flash replaces): ratio = flash's speed-up.
   MFU = FLOP/s / the GPU's bf16 dense peak, from ``PEAKS`` by device name (null, with the
   peak stated "unknown", on any other device, the CPU included). Its anchor is a dense bf16
   GEMM measured in the same run as a fraction of the same peak, and its ratio is our FLOP/s
   over that GEMM's FLOP/s (known whether or not the peak is).
2. **S/16 pretraining, bf16, ZeRO-2 configured, with a mid-run checkpoint and a resume.** A
   real ``scaling pretrain`` (Ray Train, one GPU worker, DeepSpeed) of
   ``jobs/configs/gpu-s16.yaml`` on a small synthetic world (128 px sites, so 128 px crops)
   for ``steps`` steps with a checkpoint at half-way; then a second call resumes from that
   mid-run checkpoint (``--resume``, as ``tests/test_train.py`` does) and must reach the
   target step with the same crops seen. On one process DeepSpeed runs stage 0
   (``scaling.train.engine``: ZeRO has nothing to partition over one rank); the lines say
   the configured and the effective stage. Anchor: a plain PyTorch loop of the same module,
   batch, dtype and optimizer on random crops already on the device (as ``bench train``).
3. **Evaluation on the GPU.** ``embed_wells`` (the Ray Data actors behind ``scaling
   evaluate``, every block in one pass) and ``evaluate`` (embedding + every block's
   benchmarks, no baselines) of the resumed checkpoint, timed. Anchor: the plain forward
   pass floor, ``MAE.embed_blocks`` over the same tiles already decoded in memory, in
   batches of 256 on the same device and dtype.

``dry=True`` runs the same three steps on the CPU with tiny stand-ins (cpu-2xs for L/8 and
S/16, 64 px crops, the ``tiny`` world, a few steps; the L/8 stand-in in float32 so that SDPA,
and so the flash/math switch, is really used: the model's bfloat16 CPU attention bypasses
SDPA) so the whole path is exercised without a GPU. Every line is ``bench.line``'s object
plus ``value`` (= ``ours``), ``device`` and the settings.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from scaling.bench import line
from scaling.config import Config, load_config
from scaling.errors import InputError
from scaling.model.flops import train_flops
from scaling.model.mae import MAE
from scaling.model.precision import autocast
from scaling.model.sizes import SIZES

CONFIGS = Path(__file__).resolve().parent.parent.parent / "jobs" / "configs"

# bf16 dense tensor-core peak FLOP/s by device name (vendor data sheets, no sparsity); the
# first substring found in torch.cuda.get_device_name() wins, so the specific names lead
PEAKS = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100", 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
]

# what each mode runs: the GPU check and its CPU stand-in
PLANS = {
    "gpu": {
        "mfu": [],  # gpu-l8.yaml as it is: L/8, 256 px crops, batch 64, bf16, Lion
        "mfu_steps": (3, 10),  # warm-up, timed
        "train": ["data.crop=128"],  # gpu-s16.yaml on a 128 px world
        "steps": 60,
        "preset": "small",
        "gemm": 8192,
    },
    "dry": {
        "mfu": ["model.name=cpu-2xs", "data.crop=64", "data.batch_size=8", "train.precision=fp32"],
        "mfu_steps": (1, 3),
        "train": [
            "model.name=cpu-2xs",
            "data.crop=64",
            "data.batch_size=16",
            "train.use_gpu=false",
            "train.cpus_per_worker=1",
        ],
        "steps": 10,
        "preset": "tiny",
        "gemm": 512,
    },
}


def bf16_peak(name: str) -> float | None:
    """The bf16 dense peak FLOP/s of a device named ``name``, or None when unknown."""
    return next((peak for key, peak in PEAKS if key in name), None)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_flops(device: torch.device, n: int, repeats: int = 10) -> float:
    """Dense bf16 GEMM FLOP/s of an n x n x n product on ``device`` (mean of ``repeats``
    after warm-up): what a plain matmul reaches there, measured in the same run."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def plain_steps(cfg: Config, device, warmup: int, steps: int, backend=None) -> float:
    """Seconds per optimizer step of a plain PyTorch loop of ``cfg``'s MAE (its batch, crop,
    precision, optimizer, clipping) on random uint8 crops (B, 6, crop, crop) already on
    ``device``; attention on SDPA ``backend`` (None: torch's choice). Synchronised."""
    from scaling.train.optim import make_optimizer

    b, c = cfg.data.batch_size, cfg.data.crop
    torch.manual_seed(cfg.train.seed)
    with torch.device(device):  # L/8 is built where it runs, not copied there
        model = MAE.from_config(cfg)
    opt = make_optimizer(model, cfg.train)
    x = torch.randint(0, 256, (b, 6, c, c), dtype=torch.uint8, device=device)
    with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
        for i in range(warmup + steps):
            if i == warmup:
                sync(device)
                t0 = time.perf_counter()
            with autocast(cfg.train.precision, device):
                loss, _, _ = model(x)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync(device)
    return (time.perf_counter() - t0) / steps


def free(device) -> None:
    """Give the GPU memory this process cached back (the next step's workers need it)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def figure(case, ours, anchor, anchor_value, unit, device, ratio=None, **extra) -> dict:
    """One line: ``bench.line``'s keys (ratio = ours / anchor unless given) plus ``value``
    (= ours) and ``device``. A figure that cannot be known (MFU against an unknown peak) is
    null, and its ratio is then the one given, or null."""
    if ours is not None and anchor_value is not None:
        row = line("gpu", case, ours, anchor, anchor_value, unit)
    else:
        row = dict(bench="gpu", case=case, ours=ours, anchor=anchor, anchor_value=anchor_value)
        row.update(ratio=None, unit=unit)
    if ratio is not None:
        row["ratio"] = ratio
    return {**row, "value": ours, "device": device, **extra}


def flops_per_s(cfg: Config, device, backend, warmup: int, steps: int) -> float:
    """Training FLOP/s (analytic, ``train_flops``) of the plain loop on SDPA ``backend``."""
    per_step = train_flops(SIZES[cfg.model.name], cfg.data.crop, mask_ratio=cfg.model.mask_ratio)
    return per_step * cfg.data.batch_size / plain_steps(cfg, device, warmup, steps, backend)


def mfu_lines(plan: dict, device, name: str) -> list[dict]:
    """Step 1: L/8 (or its stand-in) FLOP/s with flash and math SDPA, and MFU."""
    cfg = load_config(CONFIGS / "gpu-l8.yaml", plan["mfu"])
    warmup, steps = plan["mfu_steps"]
    flash = flops_per_s(cfg, device, SDPBackend.FLASH_ATTENTION, warmup, steps)
    free(device)
    try:
        math = flops_per_s(cfg, device, SDPBackend.MATH, warmup, steps)
    except torch.cuda.OutOfMemoryError:  # math keeps every attention matrix for backward
        math = None
    free(device)
    gemm = gemm_flops(device, plan["gemm"])
    free(device)
    peak = bf16_peak(name) if device.type == "cuda" else None
    about = dict(
        model=cfg.model.name,
        crop=cfg.data.crop,
        batch=cfg.data.batch_size,
        precision=cfg.train.precision,
        steps=steps,
        flops_per_crop=train_flops(
            SIZES[cfg.model.name], cfg.data.crop, mask_ratio=cfg.model.mask_ratio
        ),
    )
    frac = (lambda v: v / peak) if peak else (lambda v: None)
    return [
        figure(
            "L/8 train FLOP/s, flash SDPA",
            flash,
            "the same steps on SDPA's math backend, same run (null: out of memory)",
            math,
            "FLOP/s",
            name,
            seconds_per_step=cfg.data.batch_size * about["flops_per_crop"] / flash,
            **about,
        ),
        figure(
            "L/8 MFU, flash SDPA",
            frac(flash),
            f"dense bf16 GEMM {plan['gemm']}^3 measured in the same run, as a fraction of the peak",
            frac(gemm),
            "fraction of bf16 dense peak",
            name,
            ratio=flash / gemm,
            peak_flops=peak,
            peak=f"{peak:.4g} FLOP/s (bf16 dense, data sheet)" if peak else "unknown",
            gemm_flops=gemm,
            achieved_flops=flash,
            **about,
        ),
    ]


def mid_checkpoint(run_dir: Path, step: int) -> str:
    """The folder of the checkpoint Ray Train registered at ``step`` in ``run_dir``."""
    snapshot = json.loads((run_dir / "ray" / "checkpoint_manager_snapshot.json").read_text())
    found = [
        c["checkpoint_dir_name"]
        for c in snapshot["checkpoint_results"]
        if c["metrics"]["step"] == step
    ]
    if not found:
        raise RuntimeError(f"{run_dir}: no checkpoint registered at step {step}")
    return str(run_dir / "ray" / found[0])


def steady_step(run_dir: Path, batch: int) -> float:
    """Median seconds per step of a run's reporting windows (``metrics.jsonl``), the first
    window (which holds the start) left out."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["crops_per_s"] for r in rows[1:] if r.get("crops_per_s", 0) > 0] or [
        rows[0]["crops_per_s"]
    ]
    return statistics.median(batch / r for r in rates)


def local_stage(work: Path) -> list[str]:
    """Overrides that stage shards and checkpoints under ``work`` (the GPU configs' own
    /mnt/nvme is a cluster node's): the staging path runs, on whatever disk ``work`` is."""
    return [
        f"data.stage_dir={work / 'stage' / 'shards'}",
        f"train.checkpoint_stage_dir={work / 'stage' / 'checkpoints'}",
    ]


def run_twice(plan: dict, world: str, work: Path, device) -> dict:
    """S/16 (or its stand-in) run to ``steps`` with a checkpoint half-way (``work/a``), then a
    second ``pretrain`` call resumed from that mid-run checkpoint (``work/b``), each timed."""
    from scaling.train.pretrain import pretrain

    steps = plan["steps"]
    sets = (
        plan["train"]
        + local_stage(work)
        + [
            f"data.path={world}",
            f"train.steps={steps}",
            "train.workers=1",
            f"train.checkpoint_every={steps // 2}",
            f"train.val_every={steps // 2}",
            f"train.log_every={max(1, steps // 5)}",
        ]
    )
    if device.type == "cuda":
        sets.append(f"train.cpus_per_worker={max(1, min(8, (os.cpu_count() or 2) // 2))}")
    out = {"cfg": load_config(CONFIGS / "gpu-s16.yaml", sets + [f"run.dir={work / 'a'}"])}
    t0 = time.perf_counter()
    out["first"] = pretrain(out["cfg"])
    out["first_s"] = time.perf_counter() - t0
    again = load_config(CONFIGS / "gpu-s16.yaml", sets + [f"run.dir={work / 'b'}"])
    t0 = time.perf_counter()
    out["resumed"] = pretrain(again, resume=mid_checkpoint(work / "a", steps // 2))
    out["resumed_s"] = time.perf_counter() - t0
    return out


def pretrain_lines(plan: dict, world: str, work: Path, device, name: str) -> tuple[list, str]:
    """Step 2: the run, its resume and the plain loop: (lines, the resumed run's last
    checkpoint)."""
    from scaling.train.engine import deepspeed_config

    r = run_twice(plan, world, work, device)
    cfg, first, resumed = r["cfg"], r["first"], r["resumed"]
    steps, b = plan["steps"], cfg.data.batch_size
    mid = steps // 2
    plain = plain_steps(cfg, device, 2, max(3, mid // 2))
    free(device)
    ours = steady_step(work / "a", b)
    about = dict(
        model=cfg.model.name,
        crop=cfg.data.crop,
        batch=b,
        precision=cfg.train.precision,
        zero_stage=cfg.train.zero_stage,
        zero_stage_effective=deepspeed_config(cfg, world=1)["zero_optimization"]["stage"],
        workers=1,
    )
    anchor = "plain PyTorch loop, same module, batch, dtype and optimizer, crops on the device"
    lines = [
        figure("S/16 pretrain steady", ours, anchor, plain, "s/step", name, **about),
        figure(
            "S/16 pretrain with a mid-run checkpoint",
            r["first_s"],
            f"{anchor}: {steps} x its s/step",
            plain * steps,
            "s",
            name,
            steps=steps,
            checkpoint_at=mid,
            steps_per_s=steps / r["first_s"],
            step=first["step"],
            startup_s=first["startup_s"],
            **about,
        ),
        figure(
            "S/16 resume from the mid-run checkpoint",
            r["resumed_s"],
            f"{anchor}: {steps - mid} x its s/step",
            plain * (steps - mid),
            "s",
            name,
            resumed_from=mid,
            steps_per_s=(steps - mid) / r["resumed_s"],
            step=resumed["step"],
            target=steps,
            ok=resumed["step"] == steps and resumed["crops_seen"] == first["crops_seen"],
            startup_s=resumed["startup_s"],
            **about,
        ),
    ]
    lines[0]["steps_per_s"] = 1 / ours
    return lines, resumed["checkpoint"]


def plain_embed(spec, world: str, device) -> tuple[float, int]:
    """The floor: seconds of ``embed_blocks`` over every tile of ``world`` already decoded
    in memory (N, C, crop, crop) uint8, batches of 256, on ``device``: (seconds, tiles)."""
    import numpy as np

    from scaling.evaluate.embed import build
    from scaling.evaluate.tiles import read_tiles, screen, tile_tasks

    tasks = tile_tasks(screen(world, spec.crop))
    parts = [read_tiles(t, spec.crop) for t in tasks]
    tiles = torch.from_numpy(np.concatenate([p["tiles"] for p in parts])).to(device)
    model = build(spec).to(device)
    with torch.inference_mode(), autocast(spec.cfg.train.precision, device):
        model.embed_blocks(tiles[:256])  # warm-up
        sync(device)
        t0 = time.perf_counter()
        for i in range(0, len(tiles), 256):
            model.embed_blocks(tiles[i : i + 256]).cpu()
        sync(device)
    return time.perf_counter() - t0, len(tiles)


def eval_lines(checkpoint: str, world: str, work: Path, device, name: str) -> list[dict]:
    """Step 3: the checkpoint embedded (every block) and evaluated, against the floor."""
    from scaling.evaluate.embed import embed_wells, load_spec
    from scaling.evaluate.evaluate import evaluate

    spec = load_spec(checkpoint)
    t0 = time.perf_counter()
    wells, _ = embed_wells(world, spec, actors=1, progress=False)
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary = evaluate(checkpoint, world, work / "eval", baselines=False, actors=1, progress=False)
    eval_s = time.perf_counter() - t0
    floor, tiles = plain_embed(spec, world, device)
    about = dict(model=spec.cfg.model.name, crop=spec.crop, wells=len(wells), tiles=tiles)
    anchor = "embed_blocks over the same tiles decoded in memory, batches of 256, same device"
    mae = summary["mae"]
    return [
        figure("embed every block", embed_s, anchor, floor, "s", name, **about),
        figure(
            "evaluate (embed + benchmarks)",
            eval_s,
            anchor,
            floor,
            "s",
            name,
            best_block=mae["best_block"],
            recall_complex=mae.get("recall_complex"),
            **about,
        ),
    ]


def quietly(fn, *args):
    """``fn(*args)`` with whatever it prints (DeepSpeed's logger, Ray) sent to stderr, so
    that stdout holds only the JSON lines."""
    with contextlib.redirect_stdout(sys.stderr):
        return fn(*args)


def bench_gpu(data: str | None = None, dry: bool = False):
    """The three steps on one CUDA GPU (``dry``: on the CPU with stand-ins)."""
    if not dry and not torch.cuda.is_available():
        raise InputError(
            "bench gpu: no CUDA device (torch.cuda.is_available() is False); "
            "pass --dry for the CPU stand-in"
        )
    if dry:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from scaling.parallel import init_ray
    from scaling.world.synth import synthesize

    plan = PLANS["dry" if dry else "gpu"]
    device = torch.device("cpu" if dry else "cuda")
    name = device_name(device)
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    t0 = time.perf_counter()

    def say(what: str) -> None:  # progress on stderr: where the minutes go
        print(f"gpu check: {what} at {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    try:
        quietly(init_ray, None, False)
        say(f"{name}: ray up; 1/3 L/8 steps")
        for row in quietly(mfu_lines, plan, device, name):
            yield {**row, "dry": dry}
        if data is None:
            say(f"rendering the {plan['preset']!r} world")
            data = str(work / "world")
            quietly(lambda: synthesize(data, preset=plan["preset"], seed=0, progress=False))
        say("2/3 S/16 pretrain, then its resume")
        lines, checkpoint = quietly(pretrain_lines, plan, data, work, device, name)
        for row in lines:
            yield {**row, "dry": dry}
        say("3/3 embed and evaluate")
        for row in quietly(eval_lines, checkpoint, data, work, device, name):
            yield {**row, "dry": dry}
        say("done")
    finally:
        shutil.rmtree(work, ignore_errors=True)
