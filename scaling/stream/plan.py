"""The crop stream's plan, from metadata alone: which Parquet row groups hold training
sites, the parts and tasks they form each epoch, and where a crop position falls.

Shards keep one well per row group (``scaling.shards.format``), so a curation that keeps
40% of the wells reads about 40% of the pixels: a row group without a training site is
never planned. The index reads only the key and geometry columns of each shard.

Every epoch visits every part once in a seeded random order (the file-level shuffle) and
splits that order into ``per_epoch`` tasks of about ``TASK_BYTES``; task ``t`` is a pure
function of (seed, t), so the task list is never built up front and a run can start, or
restart, at any task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from scaling.config import DataConfig
from scaling.errors import InputError
from scaling.shards.dataset import Dataset, read_groups
from scaling.shards.format import META_COLUMNS
from scaling.stream.crops import held_out, site_ids, training_rows

PART_BYTES = 16 << 20  # uncompressed bytes of one part (row groups of one shard)
TASK_BYTES = 64 << 20  # uncompressed bytes one read/crop task takes: big tasks, few gaps


def site_index(ds: Dataset, cfg: DataConfig) -> pd.DataFrame:
    """One row per site of the shards, without reading a pixel: ``file`` (index into
    ``ds.files``), ``group`` and ``row`` (its row group and row within it), ``id``,
    ``held`` (validation hold-out), ``train`` (kept by the training stream: not held out,
    in the selection), ``group_bytes`` (uncompressed bytes of its row group) and every
    metadata column of the shards (``META_COLUMNS``)."""
    selected = ds.selected_keys()
    frames = []
    for i, f in enumerate(ds.files):
        pf = pq.ParquetFile(f)
        t = pf.read(columns=META_COLUMNS, use_threads=False)
        groups = [pf.metadata.row_group(g) for g in range(pf.metadata.num_row_groups)]
        counts = [g.num_rows for g in groups]
        ids = site_ids(t)
        frame = t.to_pandas()
        extra = {
            "file": np.full(len(ids), i),
            "group": np.repeat(np.arange(len(groups)), counts),
            "row": np.concatenate([np.arange(c) for c in counts] or [np.zeros(0, int)]),
            "id": ids,
            "held": held_out(ids, cfg.seed, cfg.val_fraction),
            "train": training_rows(t, ids, cfg.seed, cfg.val_fraction, selected),
            "group_bytes": np.repeat([g.total_byte_size for g in groups], counts),
        }
        frame = pd.concat([frame, pd.DataFrame(extra)], axis=1)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def read_sites(ds: Dataset, rows: pd.DataFrame, columns: list[str]) -> pa.Table:
    """``columns`` of the index ``rows`` (file, group, row order), reading only their row
    groups."""
    tables = []
    for (f, g), r in rows.sort_values(["file", "group", "row"]).groupby(["file", "group"]):
        t = read_groups(ds.files[f], [g], columns)
        tables.append(t.take(pa.array(r["row"].to_numpy())))
    return pa.concat_tables(tables)


@dataclass(frozen=True)
class Part:
    """Row groups of one shard read together: ``sites`` training sites in ``nbytes``."""

    path: str
    groups: tuple[int, ...]
    nbytes: int
    sites: int


def plan_parts(ds: Dataset, index: pd.DataFrame, part_bytes: int = PART_BYTES) -> list[Part]:
    """The row groups that hold a training site, cut into parts of about ``part_bytes``
    uncompressed (groups of one shard, in file order). Other groups are never read."""
    per_group = (
        index[index.train]
        .groupby(["file", "group"], sort=True)
        .agg(sites=("id", "size"), nbytes=("group_bytes", "first"))
    )
    parts, run = [], []
    for (f, g), r in per_group.iterrows():
        if run and run[-1][0] != f:
            parts.append(_part(ds, run))
            run = []
        run.append((f, g, int(r["nbytes"]), int(r["sites"])))
        if sum(x[2] for x in run) >= part_bytes:
            parts.append(_part(ds, run))
            run = []
    if run:
        parts.append(_part(ds, run))
    return parts


def _part(ds: Dataset, run: list) -> Part:
    return Part(
        str(ds.files[run[0][0]]),
        tuple(int(x[1]) for x in run),
        sum(x[2] for x in run),
        sum(x[3] for x in run),
    )


@dataclass(frozen=True)
class StreamPlan:
    """The stream's tasks: ``per_epoch`` a pass, ``epochs`` passes, task ``t`` in epoch
    ``t // per_epoch``."""

    parts: tuple[Part, ...]
    seed: int
    crops_per_site: int
    epochs: int
    per_epoch: int

    @property
    def tasks(self) -> int:
        return self.per_epoch * self.epochs

    def epoch(self, e: int) -> list[np.ndarray]:
        """Epoch ``e``'s tasks: part indices, the parts in a seeded random order, split."""
        order = np.random.default_rng([self.seed, 6, e]).permutation(len(self.parts))
        return np.array_split(order, self.per_epoch)

    def task(self, t: int) -> list[Part]:
        e, j = divmod(t, self.per_epoch)
        return [self.parts[p] for p in self.epoch(e)[j]]

    def task_crops(self) -> list[int]:
        """Crops each task yields, in stream order."""
        return [
            sum(self.parts[p].sites for p in task) * self.crops_per_site
            for e in range(self.epochs)
            for task in self.epoch(e)
        ]

    def crops_before(self, t: int) -> int:
        """Crops the stream yields before task ``t``."""
        return sum(self.task_crops()[:t])

    def tasks_within(self, done: int) -> int:
        """How many leading tasks fit in the stream's first ``done`` crops: the task a run
        that has consumed ``done`` crops resumes at."""
        total = np.cumsum(self.task_crops())
        return int(np.searchsorted(total, done, side="right"))


def stream_plan(
    ds: Dataset, cfg: DataConfig, index: pd.DataFrame, epochs: int, part_bytes: int = PART_BYTES
) -> StreamPlan:
    """The plan of ``epochs`` passes over the training sites of ``ds``, tasks of about
    ``TASK_BYTES``."""
    if epochs < 1:
        raise InputError(f"epochs: must be positive, got {epochs}")
    parts = plan_parts(ds, index, part_bytes)
    if not parts:
        raise InputError(f"{ds.root}: no training sites after the hold-out and the selection")
    per_epoch = min(len(parts), math.ceil(sum(p.nbytes for p in parts) / TASK_BYTES))
    return StreamPlan(tuple(parts), cfg.seed, cfg.crops_per_site, epochs, per_epoch)
