"""``scaling bench embed``: ``scaling embed`` (Ray Data read tasks and embedding tasks,
streamed well means, Parquet parts) against its anchor, a plain PyTorch loop in this
process over the same tiles: read the same row groups, cut the same tiles, run the same
model to the same block in batches of the same size, average to wells (model built and data
read inside the clock of both).

Throughput is separated from start-up as in ``scaling bench train``: each side embeds the
first shard's wells (a small job) and the whole screen, and the line through the two
(seconds against wells) gives the marginal seconds a well (case ``wells-...``, the steady
state a screen of any size runs at) and the fixed seconds a job (``startup-...``: for ours
Ray Data starting the job and a reused worker building the model; for the anchor the model
build). ``job-...`` is the whole job on this screen, a well. Medians over
``REPEATS`` pairs, ours and the anchor alternating.

Ours runs with the C allocator's settings our processes start with (``scaling.parallel``
``reuse_freed_memory``); the anchor in this process with glibc's defaults, as a user's loop
would. A second anchor line per case runs the same loop in a fresh process under our
settings (``TUNED``), so that what the pipeline itself costs is in the same run.

A warm-up job on the first shard's wells runs first, untimed: the first Ray Data job of a
process also starts Ray Data's own actors (stats, coordinator) and the worker processes
that embed (importing torch), a one-time cost of the process (``warmup_s`` on every line),
not of a job.

Also the saving of truncation: ``scaling embed`` at block ``depth // 2`` (where b* of an
intermediate block lands) against the full encoder, ratio = seconds at b / seconds at depth.

The model is a ``SIZE`` MAE with seeded random weights saved as a checkpoint (speed does
not depend on the weights); the world is the ``small`` preset, synthesised into a
temporary folder unless ``--data`` names a dataset.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from scaling.bench import in_fresh_process, line
from scaling.config import Config, DataConfig, ModelConfig, dump_config
from scaling.evaluate.embed import ModelSpec, build
from scaling.evaluate.screen import embed_screen
from scaling.evaluate.tiles import read_tiles, screen, tile_tasks

SIZE, CROP, BATCH = "cpu-m", 64, 256
REPEATS = 3  # pairs of (small, full) jobs a side and block
SIDES = ("ours", "anchor", "tuned")  # tuned: the anchor under our allocator settings
ANCHOR = "plain PyTorch loop over the same tiles, same block and batch"
TUNED = ANCHOR + ", our allocator settings"


def random_checkpoint(folder: Path, size: str = SIZE, crop: int = CROP) -> Path:
    """A checkpoint folder (model.safetensors + config.yaml) of a seeded random-init MAE."""
    from safetensors.torch import save_file

    cfg = Config(data=DataConfig(crop=crop), model=ModelConfig(name=size))
    folder.mkdir(parents=True, exist_ok=True)
    save_file(build(ModelSpec(cfg, None, seed=0)).state_dict(), folder / "model.safetensors")
    (folder / "config.yaml").write_text(dump_config(cfg))
    return folder


def plain_embed(checkpoint: Path, data: str, block: int) -> tuple[float, int]:
    """The anchor: (seconds, wells) of one process reading, tiling, embedding at ``block``
    and averaging to wells."""
    from scaling.evaluate.embed import load_spec

    t0 = time.perf_counter()
    spec = load_spec(checkpoint)
    model, scr = build(spec), screen(data, spec.crop)
    row = {k: i for i, k in enumerate(scr.wells["key"])}
    sums = np.zeros((len(row), model.size.width), np.float64)
    with torch.inference_mode():
        for task in tile_tasks(scr):
            t = read_tiles(task, spec.crop)
            idx = np.fromiter((row[k] for k in t["key"]), np.int64, len(t["key"]))
            for i in range(0, len(idx), BATCH):
                x = torch.from_numpy(t["tiles"][i : i + BATCH])
                np.add.at(sums, idx[i : i + BATCH], model.embed_blocks(x, block)[:, -1].numpy())
    means = (sums / scr.wells["tiles"].to_numpy()[:, None]).astype(np.float32)
    assert np.isfinite(means).all()
    return time.perf_counter() - t0, len(row)


def tuned_embed(checkpoint: Path, data: str, block: int) -> tuple[float, int]:
    """``plain_embed`` in a fresh process started with our allocator settings."""
    seconds, wells = in_fresh_process(
        "import json; from scaling.bench.embed import plain_embed; "
        f"print(json.dumps(plain_embed({str(checkpoint)!r}, {data!r}, {block})))",
        our_allocator=True,
    )
    return seconds, wells


def first_shard_curation(data: str, tmp: Path) -> str:
    """A curation manifest (the layout ``scaling curate`` writes) of the first shard's wells."""
    import pyarrow.parquet as pq

    from scaling.shards.dataset import open_dataset
    from scaling.shards.format import KEY_COLUMNS

    first = open_dataset(data).files[0]
    wells = pq.read_table(first, columns=KEY_COLUMNS).to_pandas().drop_duplicates()
    out = tmp / "first-shard"
    out.mkdir()
    wells.to_parquet(out / "wells.parquet", index=False)
    (out / "curation.json").write_text(
        json.dumps({"strategy": "first-shard", "source": str(Path(data).resolve())})
    )
    return str(out)


def timed_embed(checkpoint: Path, data: str, out: Path, block: int) -> tuple[float, int]:
    """(seconds, wells) of ``scaling embed`` at ``block``."""
    t0 = time.perf_counter()
    s = embed_screen(checkpoint, data, out, block=block, overwrite=True, progress=False)
    return time.perf_counter() - t0, s["wells"]


def fixed_and_marginal(small: tuple[float, int], full: tuple[float, int]) -> tuple[float, float]:
    """(fixed seconds a job, marginal seconds a well) from two jobs' (seconds, wells): the
    line through both points, ``seconds = fixed + marginal * wells``."""
    (t0, n0), (t1, n1) = small, full
    if n1 <= n0:
        raise ValueError(f"the full screen ({n1} wells) must be larger than the small job ({n0})")
    marginal = (t1 - t0) / (n1 - n0)
    return t1 - marginal * n1, marginal


def time_block(ckpt: Path, data: str, first: str, tmp: Path, block: int, repeats: int) -> dict:
    """Seconds and wells of ours and the anchor at ``block``, on the first shard's wells
    (``first``) and on the whole screen, ``repeats`` times, ours and the anchor alternating."""
    runs = {f"{side}_{job}": [] for side in SIDES for job in ("small", "full")}
    for r in range(repeats):
        jobs = [  # like jobs side by side: the machine's drift hits both sides alike
            ("ours_small", lambda: timed_embed(ckpt, first, tmp / f"s{block}.parquet", block)),
            ("anchor_small", lambda: plain_embed(ckpt, first, block)),
            ("ours_full", lambda: timed_embed(ckpt, data, tmp / f"f{block}.parquet", block)),
            ("anchor_full", lambda: plain_embed(ckpt, data, block)),
            ("tuned_small", lambda: tuned_embed(ckpt, first, block)),
            ("tuned_full", lambda: tuned_embed(ckpt, data, block)),
        ]
        for name, job in jobs if r % 2 == 0 else jobs[::-1]:
            runs[name].append(job())
    return runs


def block_lines(runs: dict, block: int, depth: int, about: dict):
    """The bench lines of one block from ``time_block``'s runs: marginal seconds a well
    (steady-state throughput), the fixed seconds a job, and the whole job a well."""
    fit = {}
    for side in SIDES:
        pairs = zip(runs[f"{side}_small"], runs[f"{side}_full"], strict=True)
        fm = [fixed_and_marginal(a, b) for a, b in pairs]
        fit[side] = tuple(statistics.median(x) for x in zip(*fm, strict=True))
    wells = runs["ours_full"][0][1]
    job = {k: statistics.median(t for t, _ in runs[f"{k}_full"]) for k in SIDES}
    about = dict(about, block=block, depth=depth, wells=wells)
    case = f"block-{block}-of-{depth}"
    yield line("embed", f"wells-{case}", fit["ours"][1], ANCHOR, fit["anchor"][1], "s/well",
               small_wells=runs["ours_small"][0][1], **about)  # fmt: skip
    yield line("embed", f"startup-{case}", fit["ours"][0], ANCHOR, fit["anchor"][0], "s", **about)
    yield line("embed", f"job-{case}", job["ours"] / wells, ANCHOR, job["anchor"] / wells,
               "s/well", **about)  # fmt: skip
    yield line("embed", f"wells-{case}", fit["ours"][1], TUNED, fit["tuned"][1], "s/well", **about)
    yield line("embed", f"job-{case}", job["ours"] / wells, TUNED, job["tuned"] / wells,
               "s/well", **about)  # fmt: skip


def bench_embed(path: str | None = None, size: str = SIZE, repeats: int = REPEATS):
    """The bench lines (module docstring)."""
    from scaling.parallel import init_ray

    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        tmp = Path(tmp)
        if path is None:
            from scaling.world.synth import synthesize

            path = str(tmp / "small")
            synthesize(path, preset="small", progress=False)
        init_ray()
        ckpt = random_checkpoint(tmp / "ckpt", size)
        depth = ModelSpec(Config(model=ModelConfig(name=size))).depth
        block = max(1, depth // 2)
        first = first_shard_curation(path, tmp)
        warm, _ = timed_embed(ckpt, first, tmp / "warm.parquet", 1)
        about = dict(warmup_s=round(warm, 2), model=size, crop=CROP,
                     threads=torch.get_num_threads(), repeats=repeats)  # fmt: skip
        full = {}
        for b in (block, depth):
            runs = time_block(ckpt, path, first, tmp, b, repeats)
            full[b] = statistics.median(t for t, _ in runs["ours_full"])
            yield from block_lines(runs, b, depth, about)
        yield line(
            "embed", f"truncation-block-{block}-of-{depth}", full[block],
            f"scaling embed with the full encoder ({depth} blocks)", full[depth], "s",
            model=size, wells=runs["ours_full"][0][1],
        )  # fmt: skip
