"""The Ray Data crop stream: shards -> decode -> random crops -> batches for Train workers.

The shards are planned into parts (runs of row groups of about ``PART_BYTES``). Every
epoch visits every part once in a seeded random order (the file-level shuffle), and
consecutive parts form one task of about ``TASK_BYTES``. One Ray Data ``map_batches``
stage reads a task's parts with pyarrow, drops unselected and held-out sites, cuts random
crops and writes each into a shuffled slot of the task's block (the batch-level shuffle).
All epochs run as one streaming execution; nothing is materialised. Crops are a pure
function of (seed, epoch, task), so a resumed run can skip the tasks it consumed
(``start``). Tasks are large because each one costs a scheduling gap; with one part per
task the two workers of a 2-core node sat idle a third of the time (measured).

Why not ``ray.data.read_parquet``: on Ray 2.60 it lists and samples the files again at
every execution (seconds per epoch at this scale) and, given a path list repeated for
several epochs, returned inconsistent row counts; ``scaling bench data`` keeps it as a case
so the difference stays measured.

Ray Train splits the stream across workers (``datasets={"train": ...}``); each worker reads
its part with ``get_dataset_shard("train").iter_torch_batches(batch_size=...,
collate_fn=CropBatch())``. The validation set
is a fixed list of grid tiles from held-out sites of the *source* dataset, so losses
compare across curations.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from ray.data.collate_fn import ArrowBatchCollateFn
from ray.data.extensions import ArrowTensorTypeV2

from scaling.config import DataConfig
from scaling.errors import InputError
from scaling.shards.dataset import Dataset, open_dataset
from scaling.shards.format import KEY_COLUMNS
from scaling.stream.crops import (
    GEOMETRY,
    crop_table,
    decode_sites,
    grid_tiles,
    held_out,
    site_ids,
    training_rows,
)

READ_COLUMNS = KEY_COLUMNS + ["site"] + GEOMETRY + ["pixels"]
PART_BYTES = 16 << 20  # uncompressed bytes of one part (a run of row groups of one shard)
TASK_BYTES = 64 << 20  # uncompressed bytes one read/crop task takes: big tasks, few gaps


def geometry(ds: Dataset, crop: int) -> tuple[int, str]:
    """Channel count and pixel dtype of the dataset; checks every site fits a crop."""
    t = pa.concat_tables(pq.read_table(f, columns=GEOMETRY) for f in ds.files)
    chans, dtypes = set(t.column("channels").to_pylist()), set(t.column("dtype").to_pylist())
    if len(chans) != 1 or len(dtypes) != 1:
        raise InputError(
            f"{ds.root}: mixed channel counts {sorted(chans)} or dtypes {sorted(dtypes)}"
        )
    side = min(min(t.column("height").to_pylist()), min(t.column("width").to_pylist()))
    if crop > side:
        raise InputError(f"data.crop: {crop} px is larger than the smallest site side ({side} px)")
    return chans.pop(), dtypes.pop()


def plan_parts(ds: Dataset, part_bytes: int = PART_BYTES) -> list[tuple[str, list[int], int]]:
    """Split every shard into parts: (path, row groups, bytes), runs of consecutive row
    groups of about ``part_bytes`` uncompressed."""
    parts = []
    for f in ds.files:
        meta = pq.ParquetFile(f).metadata
        run, size = [], 0
        for g in range(meta.num_row_groups):
            run.append(g)
            size += meta.row_group(g).total_byte_size
            if size >= part_bytes:
                parts.append((str(f), run, size))
                run, size = [], 0
        if run:
            parts.append((str(f), run, size))
    return parts


def plan_tasks(parts: list, seed: int, epochs: int) -> list[dict]:
    """Every epoch: the parts in a seeded random order (the file-level shuffle), cut into
    tasks of about ``TASK_BYTES``. One item per task, in stream order."""
    items = []
    for e in range(epochs):
        order = np.random.default_rng([seed, 6, e]).permutation(len(parts))
        task, size = [], 0
        for p in order:
            task.append(int(p))
            size += parts[p][2]
            if size >= TASK_BYTES or p == order[-1]:
                items.append(
                    {
                        "paths": [parts[q][0] for q in task],
                        "groups": [parts[q][1] for q in task],
                        "epoch": e,
                        "task": len(items),
                    }
                )
                task, size = [], 0
    return items


def read_crops(batch: dict, **kw) -> pa.Table:
    """Ray Data map: one task's parts -> a block of crops shuffled across the whole task."""
    out = []
    for paths, groups, epoch, task in zip(
        batch["paths"], batch["groups"], batch["epoch"], batch["task"], strict=True
    ):
        table = pa.concat_tables(
            pq.ParquetFile(p).read_row_groups(list(g), columns=READ_COLUMNS, use_threads=False)
            for p, g in zip(paths, groups, strict=True)
        )
        rng = np.random.default_rng([kw["seed"], 7, int(epoch), int(task)])
        out.append(crop_table(table, rng, **kw))
    return crop_block(*(np.concatenate(x) for x in zip(*out, strict=True)))


def crop_block(crops: np.ndarray, ids: np.ndarray) -> pa.Table:
    """Crops (N, C, h, w) and site ids (N,) -> the stream's block (tensor column, no copy)."""
    return pa.table({"crop": tensor_column(crops), "site_id": ids})


def tensor_column(x: np.ndarray) -> pa.Array:
    """(N, ...) array -> Ray's tensor extension column sharing ``x``'s memory."""
    x = np.ascontiguousarray(x)
    per = int(np.prod(x.shape[1:]))
    offsets = pa.array(np.arange(0, per * (len(x) + 1), per, dtype=np.int64))
    storage = pa.LargeListArray.from_arrays(offsets, pa.array(x.reshape(-1)))
    return pa.ExtensionArray.from_storage(
        ArrowTensorTypeV2(x.shape[1:], pa.from_numpy_dtype(x.dtype)), storage
    )


def tensor_numpy(column) -> np.ndarray:
    """A tensor extension column (chunked or not) -> one (N, ...) numpy array."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = [
        c.storage.flatten().to_numpy(zero_copy_only=False).reshape(-1, *c.type.shape)
        for c in chunks
    ]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class CropBatch(ArrowBatchCollateFn):
    """Collate for ``iter_torch_batches``: an Arrow batch -> ``{"crop": (B, C, h, w) tensor,
    "site_id": (B,) int64}``, one copy, without Ray's generic per-column numpy conversion
    (which costs more per batch than cutting the crops)."""

    def __call__(self, batch: pa.Table) -> dict[str, torch.Tensor]:
        crops = tensor_numpy(batch.column("crop"))
        if not crops.flags.writeable:  # a zero-copy view of the block: take our own copy
            crops = crops.copy()
        ids = batch.column("site_id").to_numpy()
        return {"crop": torch.from_numpy(crops), "site_id": torch.from_numpy(ids.copy())}


def crop_kwargs(cfg: DataConfig, channels: int, dtype: str, selected=None) -> dict:
    """The keyword arguments of :func:`~scaling.stream.crops.crop_table` for a config."""
    return dict(
        crop=cfg.crop,
        crops_per_site=cfg.crops_per_site,
        channels=channels,
        dtype=dtype,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        selected=None if selected is None else frozenset(selected),
    )


def part_crops(ds: Dataset, cfg: DataConfig, parts: list) -> list[int]:
    """Training crops each part yields per epoch (hold-out and selection applied)."""
    selected = ds.selected_keys()
    out = []
    for path, groups, _ in parts:
        t = pq.ParquetFile(path).read_row_groups(groups, columns=KEY_COLUMNS + ["site"])
        keep = training_rows(t, site_ids(t), cfg.seed, cfg.val_fraction, selected)
        out.append(int(keep.sum()) * cfg.crops_per_site)
    return out


def tasks_within(parts: list, crops: list[int], seed: int, epochs: int, done: int) -> int:
    """How many leading tasks of the stream fit in its first ``done`` crops, given the parts
    and their per-epoch crops: the ``start`` that resumes a run as near its data position
    as task boundaries allow."""
    index = {(p, tuple(g)): n for (p, g, _), n in zip(parts, crops, strict=True)}
    total = 0
    items = plan_tasks(parts, seed, epochs)
    for k, item in enumerate(items):
        total += sum(
            index[(p, tuple(g))] for p, g in zip(item["paths"], item["groups"], strict=True)
        )
        if total > done:
            return k
    return len(items)


def crop_stream(data, cfg: DataConfig, epochs: int = 1, start: int = 0) -> ray.data.Dataset:
    """The training stream of ``data`` (a path or Dataset): rows ``crop`` (C, crop, crop) and
    ``site_id``, ``epochs`` passes, skipping the first ``start`` tasks."""
    ds = data if isinstance(data, Dataset) else open_dataset(data)
    channels, dtype = geometry(ds, cfg.crop)
    if epochs < 1:
        raise InputError(f"epochs: must be positive, got {epochs}")
    items = plan_tasks(plan_parts(ds), cfg.seed, epochs)[start:]
    if not items:
        raise InputError(f"start: {start} is past the end of the stream")
    selected = ds.selected_keys()
    stream = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        read_crops,
        batch_size=1,
        num_cpus=cfg.map_cpus,
        fn_kwargs=crop_kwargs(cfg, channels, dtype, selected),
    )
    # Ray Data reserves half of the CPUs per operator by default; the item list holds one
    # share, so on a small node only one read/crop task would run at a time (measured).
    stream.context.op_resource_reservation_enabled = False
    return stream


def validation_tiles(data, cfg: DataConfig) -> np.ndarray:
    """The fixed validation set: (N, C, crop, crop) grid tiles of held-out sites, N <= val_tiles.

    Deterministic for ``cfg.seed``; drawn from the whole source dataset (never a curation),
    spread round-robin over held-out sites in site-id order.
    """
    ds = data if isinstance(data, Dataset) else open_dataset(data)
    geometry(ds, cfg.crop)
    per_site: list[tuple[int, np.ndarray]] = []
    for f in ds.files:
        meta = pq.read_table(f, columns=KEY_COLUMNS + ["site"])
        rows = np.flatnonzero(held_out(site_ids(meta), cfg.seed, cfg.val_fraction))
        if not len(rows):
            continue
        table = pq.read_table(f, columns=READ_COLUMNS).take(pa.array(rows))
        per_site += [
            (int(i), grid_tiles(s, cfg.crop))
            for i, s in zip(site_ids(table), decode_sites(table), strict=True)
        ]
    if not per_site:
        raise InputError(f"{ds.root}: no held-out sites (data.val_fraction={cfg.val_fraction})")
    per_site.sort(key=lambda p: p[0])
    tiles: list[np.ndarray] = []
    for j in range(max(len(t) for _, t in per_site)):
        tiles += [t[j] for _, t in per_site if j < len(t)]
        if len(tiles) >= cfg.val_tiles:
            break
    return np.ascontiguousarray(np.stack(tiles[: cfg.val_tiles]))
