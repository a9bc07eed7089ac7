"""``scaling bench train``: a real ``scaling pretrain`` run (local mode) against a plain
PyTorch loop of the same MAE module, batch, dtype, threads and optimizer on crops already
in memory (contract, ARCHITECTURE section 6).

Cases, in float32 and bf16 for cpu-xs, cpu-s and cpu-m at the demo's recipe (64 px crops,
batch 32, mask 0.5, normalised-pixel loss):
- steady state, seconds per crop. Ours: the run's own counters (``crops_per_s`` of each
  reporting window in ``run.dir/metrics.jsonl``, the first window, which holds the start,
  left out; validation and checkpoints only at the end). The anchor: the same statistic
  of the plain loop, windows of ``LOG`` steps, the first left out.
- start-up: the call of ``pretrain`` to its first optimizer step (the data read, the
  validation tiles, Ray Train's local mode, DeepSpeed), against the plain loop's own start
  (model, optimizer, first step). Teardown: the last step to the call's return (final
  validation, checkpoint, result), against the plain loop's validation pass over the same
  tiles plus a safetensors save.
- CPU MFU per dtype: our steady-state training FLOP/s (ARCHITECTURE section 4) over the
  dense GEMM peak of the same threads and dtype, measured in the same run.
Ours and the anchor alternate; every figure is the median of ``repeats``. The anchor runs in
a fresh Python process of its own (``anchor_process``), as a user's plain loop would: with
the C allocator's defaults, not the settings ours runs under (``scaling.parallel``
``reuse_freed_memory``), which would otherwise carry over to it in this process.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from scaling.bench import gemm_peak, in_fresh_process, line
from scaling.config import Config, dump_config, load_config
from scaling.model.flops import train_flops
from scaling.model.mae import MAE
from scaling.model.precision import autocast
from scaling.model.sizes import SIZES

SIZES_CPU = ["cpu-xs", "cpu-s", "cpu-m"]
DTYPES = ["fp32", "bf16"]
ANCHOR = "plain PyTorch loop, crops in memory"
LOG = 10  # steps per reporting window, ours and the anchor's


def bench_config(data: str, size: str, precision: str, steps: int, threads: int, run_dir) -> Config:
    return load_config(
        None,
        [
            f"data.path={data}",
            "data.crop=64",
            "data.batch_size=32",
            f"model.name={size}",
            "model.mask_ratio=0.5",
            "model.norm_pix_loss=true",
            f"train.precision={precision}",
            f"train.steps={steps}",
            "train.workers=0",
            f"train.cpus_per_worker={threads}",
            f"train.log_every={LOG}",
            f"train.val_every={steps}",
            f"train.checkpoint_every={steps}",
            "train.lr=0.002",
            f"run.dir={run_dir}",
        ],
    )


def ours(cfg: Config) -> dict:
    """One real local-mode run: steady-state s/crop, start-up and teardown seconds."""
    from scaling.train.pretrain import pretrain

    r = pretrain(cfg)
    returned = time.time()
    lines = (Path(cfg.run.dir) / "metrics.jsonl").read_text().splitlines()
    windows = [json.loads(x) for x in lines][1:]
    per_crop = statistics.median(1 / w["crops_per_s"] for w in windows if w["crops_per_s"] > 0)
    last = json.loads(lines[-1])["last_step_at"]
    return {"per_crop": per_crop, "startup": r["startup_s"], "teardown": returned - last}


def anchor_process(cfg: Config, steps: int, threads: int) -> dict:
    """``anchor`` in a fresh Python process with the allocator's defaults (module doc)."""
    path = Path(cfg.run.dir).with_name(Path(cfg.run.dir).name + "-anchor.yaml")
    path.write_text(dump_config(cfg))
    return in_fresh_process(
        "from scaling.bench.train import anchor_main; "
        f"anchor_main({str(path)!r}, {steps}, {threads})"
    )


def anchor_main(config: str, steps: int, threads: int) -> None:
    """The anchor process: the validation tiles (untimed), then ``anchor``; prints its JSON."""
    from scaling.stream.pipeline import validation_tiles

    torch.set_num_threads(threads)
    cfg = load_config(config)
    tiles = torch.from_numpy(validation_tiles(cfg.data.path, cfg.data))
    print(json.dumps(anchor(cfg, tiles, steps)))


def anchor(cfg: Config, tiles: torch.Tensor, steps: int) -> dict:
    """The plain loop: the same module, optimizer, schedule, clipping and dtype."""
    from safetensors.torch import save_file

    from scaling.train.optim import make_optimizer
    from scaling.train.schedules import Schedule

    t, b = cfg.train, cfg.data.batch_size
    g = torch.Generator().manual_seed(0)
    crops = torch.randint(0, 256, (steps * b, 6, 64, 64), generator=g, dtype=torch.uint8)
    t0 = time.perf_counter()
    torch.manual_seed(t.seed)
    model = MAE.from_config(cfg)
    opt = make_optimizer(model, t)
    lr = torch.optim.lr_scheduler.LambdaLR(opt, Schedule(t))
    ends = []
    for i in range(steps):
        with autocast(t.precision):
            loss, _, _ = model(crops[i * b : (i + 1) * b])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        lr.step()
        opt.zero_grad(set_to_none=True)
        ends.append(time.perf_counter())
        if i == 0:
            startup = time.perf_counter() - t0
    e0 = time.perf_counter()
    with torch.no_grad(), autocast(t.precision):
        for i in range(0, len(tiles), b):
            model(tiles[i : i + b])
    with tempfile.TemporaryDirectory() as d:
        save_file(model.state_dict(), f"{d}/model.safetensors")
    teardown = time.perf_counter() - e0
    marks = ends[LOG - 1 :: LOG]  # window ends, as ours reports them
    windows = [(t1 - t0) / (LOG * b) for t0, t1 in zip(marks, marks[1:], strict=False)]
    return {"per_crop": statistics.median(windows), "startup": startup, "teardown": teardown}


def bench_train(data: str | None = None, repeats: int = 3, steps: int = 60, threads: int = 1):
    from scaling.parallel import init_ray
    from scaling.world.synth import synthesize

    torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    if data is None:
        data = str(work / "world")
        synthesize(data, preset="small", seed=0, progress=False)
    init_ray()
    results: dict = {}
    for r in range(repeats):
        for precision in DTYPES:
            for size in SIZES_CPU:
                cfg = bench_config(
                    data, size, precision, steps, threads, work / f"{size}-{precision}-{r}"
                )
                key = (size, precision)
                results.setdefault(key, []).append((ours(cfg), anchor_process(cfg, steps, threads)))
    peaks = {p: gemm_peak(p) for p in DTYPES}
    yield from _lines(results, peaks, threads)


def _median(pairs, side: int, key: str) -> float:
    return statistics.median(p[side][key] for p in pairs)


def _lines(results: dict, peaks: dict, threads: int):
    extra = dict(threads=threads, crop=64, batch=32)
    flops = {p: [0.0, 0.0] for p in DTYPES}  # delivered FLOPs and seconds, per dtype
    for (size, precision), pairs in results.items():
        o, a = _median(pairs, 0, "per_crop"), _median(pairs, 1, "per_crop")
        yield line("train", f"{size} {precision} steady", o, ANCHOR, a, "s/crop", **extra)
        per_crop = train_flops(SIZES[size], 64, mask_ratio=0.5)
        flops[precision][0] += per_crop
        flops[precision][1] += o
    first = next(iter(results.values()))
    for case, key in (("startup", "startup"), ("teardown", "teardown")):
        o, a = _median(first, 0, key), _median(first, 1, key)
        yield line("train", f"{case} (one local-mode run)", o, ANCHOR, a, "s", **extra)
    for precision in DTYPES:
        achieved = flops[precision][0] / flops[precision][1]
        yield line(
            "train",
            f"cpu-mfu {precision}",
            achieved,
            f"dense {precision} GEMM peak (2048^2)",
            peaks[precision],
            "FLOP/s",
            **extra,
        )
