"""``scaling bench data``: seconds per 10,000 crops of the Ray Data stream, against a plain
single-process pyarrow + numpy loop that reads the same shards and cuts the same crops
into the same torch batches (contract, ARCHITECTURE section 6).

Cases: one consumer; two consumers of a streaming split (as two Train workers read it);
and the same crops through ``ray.data.read_parquet`` (one execution per epoch), kept to
show why the stream plans its own work units. Worker start-up is warmed off the clock;
every case streams ``EPOCHS`` epochs; ours and the anchor report the median of ``REPEATS``.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import ray
import torch

from scaling.bench import line
from scaling.config import DataConfig
from scaling.parallel import init_ray
from scaling.shards.dataset import open_dataset
from scaling.stream.crops import crop_table, held_out, site_ids
from scaling.stream.pipeline import (
    READ_COLUMNS,
    CropBatch,
    crop_block,
    crop_kwargs,
    crop_stream,
    geometry,
)

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


def bench_data(path: str | None = None, epochs: int = EPOCHS, repeats: int = REPEATS):
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

    channels, dtype = geometry(ds, cfg.crop)
    rp = read_parquet_stream(ds.files, cfg, channels, dtype)
    ours, n = timed(lambda: sum(consume(rp, cfg.batch_size) for _ in range(epochs)), 1)
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
    if tmp is not None:
        tmp.cleanup()
