"""The Ray Data crop stream: shards -> decode -> random crops -> batches for Train workers.

The plan (``plan.py``, metadata only) cuts the row groups that hold training sites into
parts and every epoch's seeded part order into tasks of about ``TASK_BYTES``. The stream
is a datasource of task numbers (``TaskNumbers``) fused with one ``map_batches`` stage that reads a
task's parts with pyarrow, drops unselected and held-out sites, cuts random crops and
writes each into a shuffled slot of the task's block (the batch-level shuffle). All epochs
run as one streaming execution; nothing is materialised, and the task list is never built:
task ``t``'s parts are computed when it runs. Crops are a pure function of (seed, task),
so a run starts at any task (``start``), and a worker group restarted inside one fit moves
the stream's ``StreamPosition`` to its checkpoint's task, so the tasks before it yield
nothing instead of being read and cropped again. Tasks are large because each one costs a
scheduling gap; with one part per task the two workers of a 2-core node sat idle a third
of the time (measured).

Why not ``ray.data.read_parquet``: on Ray 2.60 it lists and samples the files again at
every execution (seconds per epoch at this scale) and, given a path list repeated for
several epochs, returned inconsistent row counts; ``scaling bench data`` keeps it as a case
so the difference stays measured.

Ray Train splits the stream across workers (``datasets={"train": ...}``); each worker reads
its part with ``get_dataset_shard("train").iter_torch_batches(batch_size=...,
collate_fn=CropBatch())`` (``collate.py``: torch is imported there, not here, so that the
processes that only plan or coordinate the stream, such as a ``streaming_split``'s
coordinator, start without it). The validation set is a fixed list of grid tiles from
held-out sites of the *source* dataset, so losses compare across curations; it is chosen
from the index and only its sites' row groups are read.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask
from ray.data.extensions import ArrowTensorTypeV2

from scaling.config import DataConfig
from scaling.errors import InputError
from scaling.shards.dataset import Dataset, open_dataset, read_groups
from scaling.shards.format import KEY_COLUMNS
from scaling.stream.crops import GEOMETRY, crop_table, decode_sites, grid_tiles, site_ids
from scaling.stream.plan import StreamPlan, read_sites, site_index, stream_plan

READ_COLUMNS = KEY_COLUMNS + ["site"] + GEOMETRY + ["pixels"]


def geometry(ds: Dataset, crop: int, index: pd.DataFrame) -> tuple[int, str]:
    """Channel count and pixel dtype of the dataset; checks every site fits a crop."""
    chans, dtypes = set(index["channels"]), set(index["dtype"])
    if len(chans) != 1 or len(dtypes) != 1:
        raise InputError(
            f"{ds.root}: mixed channel counts {sorted(chans)} or dtypes {sorted(dtypes)}"
        )
    side = min(index["height"].min(), index["width"].min())
    if crop > side:
        raise InputError(f"data.crop: {crop} px is larger than the smallest site side ({side} px)")
    return int(chans.pop()), str(dtypes.pop())


@ray.remote(num_cpus=0)
class StreamPosition:
    """The first task a run's stream still yields. Read by every read/crop task; a worker
    group restarted inside a fit moves it to the task its checkpoint reached. Counts the
    tasks read, so a run can report those it read more than once."""

    def __init__(self, task: int = 0):
        self.task, self.reads = task, Counter()

    def get(self) -> int:
        return self.task

    def set(self, task: int) -> None:
        self.task = task

    def read(self, tasks: list[int]) -> None:
        self.reads.update(tasks)

    def reread(self) -> list[int]:
        """The tasks read more than once (e.g. again after a restart)."""
        return sorted(t for t, n in self.reads.items() if n > 1)


def staged(path: str, stage_dir: str | None) -> str:
    """``path``, or its copy under ``stage_dir`` on this node (e.g. local NVMe), made on
    first use: copied under a temporary name, then renamed."""
    if stage_dir is None:
        return path
    key = hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:12]
    local = Path(stage_dir) / key / Path(path).name
    if not local.is_file() or local.stat().st_size != os.path.getsize(path):
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)
    return str(local)


class TaskNumbers(Datasource):
    """The numbers 0..n-1, one a block, each made when its read runs: the stream's input.
    (``ray.data.range`` would do, but its reads take a whole CPU, which a node whose
    training workers leave ``data.map_cpus`` free cannot give: the stream stalled.)"""

    def __init__(self, n: int):
        self.n = n

    def estimate_inmemory_data_size(self) -> int:
        return 8 * self.n

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
        meta = BlockMetadata(num_rows=1, size_bytes=8, exec_stats=None)
        return [ReadTask(partial(_number, t), meta) for t in range(self.n)]


def _number(t: int) -> list[pa.Table]:
    return [pa.table({"id": pa.array([t], pa.int64())})]


def read_task(plan: StreamPlan, t: int, stage_dir: str | None = None) -> pa.Table:
    """The sites of task ``t``'s parts (only their row groups are read)."""
    return pa.concat_tables(
        read_groups(staged(p.path, stage_dir), p.groups, READ_COLUMNS) for p in plan.task(t)
    )


def read_crops(batch: dict, plan: StreamPlan, start: int, position, stage_dir, kw) -> pa.Table:
    """Ray Data map: task numbers -> a block of crops shuffled across each whole task; a
    task before the stream's position yields nothing and reads nothing."""
    first = ray.get(position.get.remote()) if position is not None else 0
    tasks = [t for t in (int(i) + start for i in batch["id"]) if t >= first]
    if position is not None and tasks:
        position.read.remote(tasks)
    out = []
    for t in tasks:
        rng = np.random.default_rng([kw["seed"], 7, t // plan.per_epoch, t])
        out.append(crop_table(read_task(plan, t, stage_dir), rng, **kw))
    if not out:
        shape = (0, kw["channels"], kw["crop"], kw["crop"])
        return crop_block(np.empty(shape, kw["dtype"]), np.empty(0, np.int64))
    if len(out) == 1:  # one task a block (batch_size=None): no concatenation copy
        return crop_block(*out[0])
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


def crop_stream(
    data, cfg: DataConfig, epochs: int = 1, start: int = 0, position=None, index=None
) -> ray.data.Dataset:
    """The training stream of ``data`` (a path or Dataset): rows ``crop`` (C, crop, crop) and
    ``site_id``, ``epochs`` passes from task ``start`` on. ``position`` (a
    :class:`StreamPosition`) lets a restarted worker group skip tasks without reading them;
    ``index`` is the dataset's :func:`~scaling.stream.plan.site_index` when already read."""
    ds = data if isinstance(data, Dataset) else open_dataset(data)
    index = site_index(ds, cfg) if index is None else index
    return planned_stream(ds, cfg, index, stream_plan(ds, cfg, index, epochs), start, position)


def planned_stream(
    ds: Dataset, cfg: DataConfig, index: pd.DataFrame, plan: StreamPlan, start=0, position=None
) -> ray.data.Dataset:
    """The stream of an already made ``plan`` of ``ds`` (see :func:`crop_stream`)."""
    channels, dtype = geometry(ds, cfg.crop, index)
    if not 0 <= start < plan.tasks:
        raise InputError(f"start: task {start} is past the end of the stream ({plan.tasks})")
    n = plan.tasks - start
    kw = crop_kwargs(cfg, channels, dtype, ds.selected_keys())
    numbers = ray.data.read_datasource(TaskNumbers(n), num_cpus=cfg.map_cpus, override_num_blocks=n)
    # batch_size=None: a block (one task number) a call, which lets Ray Data fuse this map
    # into the read (one Ray task a stream task); batch_size=1 kept them two operators
    stream = numbers.map_batches(
        read_crops,
        batch_size=None,
        num_cpus=cfg.map_cpus,
        fn_kwargs=dict(plan=plan, start=start, position=position, stage_dir=cfg.stage_dir, kw=kw),
    )
    # Ray Data reserves half of the CPUs per operator by default; on a small node only one
    # read/crop task would run at a time (measured).
    stream.context.op_resource_reservation_enabled = False
    return stream


def validation_tiles(data, cfg: DataConfig, index=None) -> np.ndarray:
    """The fixed validation set: (N, C, crop, crop) grid tiles of held-out sites, N <= val_tiles.

    Deterministic for ``cfg.seed``; drawn from the whole source dataset (never a curation),
    spread round-robin over held-out sites in site-id order. The sites are chosen from the
    index; only the row groups of the (at most ``val_tiles``) sites used are read.
    """
    ds = data if isinstance(data, Dataset) else open_dataset(data)
    index = site_index(ds, cfg) if index is None else index
    geometry(ds, cfg.crop, index)
    held = index[index.held].sort_values("id")
    if held.empty:
        raise InputError(f"{ds.root}: no held-out sites (data.val_fraction={cfg.val_fraction})")
    # round-robin takes tile 0 of every site first: later sites than val_tiles never count
    table = read_sites(ds, held.head(cfg.val_tiles), READ_COLUMNS)
    tiled = [grid_tiles(s, cfg.crop) for s in decode_sites(table)]
    per_site = sorted(zip(site_ids(table).tolist(), tiled, strict=True), key=lambda p: p[0])
    tiles: list[np.ndarray] = []
    for j in range(max(len(t) for _, t in per_site)):
        tiles += [t[j] for _, t in per_site if j < len(t)]
        if len(tiles) >= cfg.val_tiles:
            break
    return np.ascontiguousarray(np.stack(tiles[: cfg.val_tiles]))
