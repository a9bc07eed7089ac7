"""``scaling bench data``: seconds per 10,000 crops of the Ray Data stream, against a plain
single-process pyarrow + numpy loop that reads the same shards and cuts the same crops
into the same torch batches (contract, ARCHITECTURE section 6).

Cases: one consumer; two consumers of a streaming split (as two Train workers read it);
and the same crops through ``ray.data.read_parquet`` (one execution per epoch), kept to
show why the stream plans its own work units. Worker start-up is warmed off the clock;
every case streams ``EPOCHS`` epochs; ours and the anchor report the median of ``REPEATS``.

Three cases count bytes instead of seconds (the bytes this process's reads return, from
``/proc/self/io``): one epoch of a 40% random curation read the stream's way (row groups
of whole wells, only the groups holding a training site) against the way it was read
before (16-site row groups of mixed wells, every group read, the unselected sites dropped
after), on the bench's world (wells of ~200 kB, which share row groups) and on a world of
2.4 MB wells (a row group each, as real plates' wells of tens of MB); and the validation
tiles read from their sites' row groups against reading every shard's pixel column.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray
import torch

from scaling.bench import line
from scaling.config import DataConfig
from scaling.parallel import init_ray
from scaling.shards.dataset import Dataset, open_dataset
from scaling.shards.format import ROWS_PER_GROUP, write_atomic
from scaling.stream.collate import CropBatch
from scaling.stream.crops import crop_table, held_out, site_ids
from scaling.stream.pipeline import (
    READ_COLUMNS,
    crop_block,
    crop_kwargs,
    crop_stream,
    geometry,
    read_task,
    validation_tiles,
)
from scaling.stream.plan import site_index, stream_plan

PER = 10_000
EPOCHS = 8
REPEATS = 3
ANCHOR = "pyarrow+numpy loop"
UNIT = "s/10k crops"


def anchor_epoch(files, cfg: DataConfig, rng) -> int:
    """One epoch of the plain loop: files in random order, random crops, torch batches."""
    n, buf = 0, []
    for f in rng.permutation(len(files)):
        table = pq.read_table(files[f])
        keep = ~held_out(site_ids(table), cfg.seed, cfg.val_fraction)
        c, h, w = (table.column(k)[0].as_py() for k in ("channels", "height", "width"))
        dtype = table.column("dtype")[0].as_py()
        for pix, k in zip(table.column("pixels").to_pylist(), keep, strict=True):
            if not k:
                continue
            site = np.frombuffer(pix, dtype).reshape(c, h, w)
            for _ in range(cfg.crops_per_site):
                y, x = rng.integers(0, h - cfg.crop + 1), rng.integers(0, w - cfg.crop + 1)
                buf.append(site[:, y : y + cfg.crop, x : x + cfg.crop])
                if len(buf) == cfg.batch_size:
                    n += len(torch.from_numpy(np.stack(buf)))
                    buf = []
    return n + len(buf)


def consume(it, batch_size: int) -> int:
    batches = it.iter_torch_batches(batch_size=batch_size, collate_fn=CropBatch())
    return sum(len(b["crop"]) for b in batches)


@ray.remote(num_cpus=0)
class Consumer:
    """A long-lived reader, as a Ray Train worker is."""

    def ready(self) -> bool:
        return True

    def consume(self, it, batch_size: int) -> int:
        return consume(it, batch_size)


def timed(fn, repeats: int) -> tuple[float, int]:
    """Median seconds per 10k crops over ``repeats`` calls of ``fn`` (which returns crops)."""
    per, n = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn()
        per.append((time.perf_counter() - t0) * PER / n)
    return float(np.median(per)), n


def read_parquet_stream(files, cfg: DataConfig, channels: int, dtype: str) -> ray.data.Dataset:
    kw = crop_kwargs(cfg, channels, dtype)

    def crops(table):
        return crop_block(*crop_table(table, np.random.default_rng(), **kw))

    stream = ray.data.read_parquet([str(f) for f in files], shuffle="files")
    return stream.select_columns(READ_COLUMNS).map_batches(crops, batch_format="pyarrow")


def bench_data(
    path: str | None = None, epochs: int = EPOCHS, repeats: int = REPEATS, wells: bool = True
):
    """Every case; ``wells=False`` leaves out the one that synthesises a world of 2.4 MB
    wells."""
    cfg = DataConfig()
    tmp = None
    if path is None:
        from scaling.world.synth import synthesize

        tmp = tempfile.TemporaryDirectory(prefix="bench-data-")
        path = f"{tmp.name}/world"
        synthesize(path, preset="small", seed=0, progress=False)
    init_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = open_dataset(path)
    consume(crop_stream(ds, cfg), cfg.batch_size)  # warm-up: worker processes and imports
    consumers = [Consumer.remote() for _ in range(2)]
    ray.get([c.ready.remote() for c in consumers])

    anchors = {}
    for bs, case in ((cfg.batch_size, "stream-1-consumer"), (64, "stream-1-consumer-batch64")):
        c = replace(cfg, batch_size=bs)
        anchors[bs], _ = timed(
            lambda c=c: sum(
                anchor_epoch(ds.files, c, np.random.default_rng(e)) for e in range(epochs)
            ),
            repeats,
        )
        ours, n = timed(
            lambda c=c: consume(crop_stream(ds, c, epochs=epochs), c.batch_size), repeats
        )
        yield line("data", case, ours, ANCHOR, anchors[bs], UNIT, crops=n, batch_size=bs)
    anchor = anchors[cfg.batch_size]

    def two() -> int:
        its = crop_stream(ds, cfg, epochs=epochs).streaming_split(2, equal=True)
        return sum(
            ray.get(
                [c.consume.remote(it, cfg.batch_size) for c, it in zip(consumers, its, strict=True)]
            )
        )

    ours, n = timed(two, repeats)
    yield line(
        "data", "stream-2-consumers", ours, ANCHOR, anchor, UNIT, crops=n, batch_size=cfg.batch_size
    )

    channels, dtype = geometry(ds, cfg.crop, site_index(ds, cfg))
    rp = read_parquet_stream(ds.files, cfg, channels, dtype)
    ours, n = timed(lambda: sum(consume(rp, cfg.batch_size) for _ in range(epochs)), repeats)
    yield line(
        "data",
        "read_parquet-1-consumer",
        ours,
        ANCHOR,
        anchor,
        UNIT,
        crops=n,
        batch_size=cfg.batch_size,
    )
    yield from bench_bytes(ds, cfg, wells)
    if tmp is not None:
        tmp.cleanup()


def bytes_read() -> int:
    """Bytes this process's read calls have returned so far (Linux ``rchar``)."""
    io = Path("/proc/self/io").read_text().split()
    return int(io[io.index("rchar:") + 1])


def epoch_bytes(ds: Dataset, cfg: DataConfig, selected: set[str]) -> tuple[int, int]:
    """One epoch of the stream's reads and crops over ``ds``'s plan, keeping the sites of
    ``selected`` wells: (bytes read, crops)."""
    index = site_index(ds, cfg)
    channels, dtype = geometry(ds, cfg.crop, index)
    plan = stream_plan(ds, cfg, index, epochs=1)
    kw = crop_kwargs(cfg, channels, dtype, selected)
    before, crops = bytes_read(), 0
    for t in range(plan.per_epoch):
        crops += len(crop_table(read_task(plan, t), np.random.default_rng(t), **kw)[1])
    return bytes_read() - before, crops


def bench_bytes(ds: Dataset, cfg: DataConfig, wells: bool = True):
    """Bytes read per crop of a 40% curation of ``ds`` and (``wells``) of a world of 2.4 MB
    wells, and per validation tile."""
    from scaling.world.presets import PRESETS
    from scaling.world.synth import synthesize

    yield curation_bytes(ds, cfg, "curation-40pct-bytes")
    yield validation_bytes(ds, cfg)
    if not wells:
        return
    with tempfile.TemporaryDirectory(prefix="bench-wells-") as tmp:
        # one experiment of the tiny world, 6 sites of 6 x 256 x 256 a well: 2.4 MB wells
        spec = replace(PRESETS["tiny"], experiments=1, size=256, sites=6)
        synthesize(f"{tmp}/w", preset="tiny", seed=0, progress=False, spec=spec)
        yield curation_bytes(open_dataset(f"{tmp}/w"), cfg, "curation-40pct-bytes-2.4MB-wells")


def curation_bytes(ds: Dataset, cfg: DataConfig, case: str) -> dict:
    """One epoch of a 40% random curation of ``ds``: bytes read per crop, against the
    earlier layout (16-site row groups of mixed wells) read the earlier way (every group)."""
    from scaling.curate.select import curate

    with tempfile.TemporaryDirectory(prefix="bench-bytes-") as tmp:
        curate(ds.root, "random", f"{tmp}/c40", fraction=0.4)
        cur = open_dataset(f"{tmp}/c40")
        keep = cur.selected_keys()
        for f in ds.files:
            write_atomic(pq.read_table(f), Path(tmp) / "legacy" / "shards" / f.name, ROWS_PER_GROUP)
        legacy = open_dataset(Path(tmp) / "legacy")
        epoch_bytes(cur, cfg, keep)  # warm-up: lazy imports read files too
        ours, n = epoch_bytes(cur, cfg, keep)
        anchor, n_anchor = epoch_bytes(legacy, cfg, keep)
    if n != n_anchor:
        raise RuntimeError(f"the two layouts gave {n} and {n_anchor} crops")
    groups = sum(pq.ParquetFile(f).metadata.num_row_groups for f in ds.files)
    return line(
        "data", case, ours / n, "every row group, 16-site groups", anchor / n, "bytes/crop",
        crops=n, kept_wells=len(keep), row_groups=groups,
    )  # fmt: skip


def validation_bytes(ds: Dataset, cfg: DataConfig) -> dict:
    """Bytes read per validation tile, against reading every shard's pixels (as before)."""
    before = bytes_read()
    tiles = validation_tiles(ds, cfg)
    ours = bytes_read() - before
    before = bytes_read()
    for f in ds.files:
        pq.read_table(f, columns=READ_COLUMNS)
    return line(
        "data", "validation-tiles-bytes", ours / len(tiles), "every shard's pixels",
        (bytes_read() - before) / len(tiles), "bytes/tile", tiles=len(tiles),
    )  # fmt: skip
