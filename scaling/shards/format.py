"""The shard format: Parquet files with one row per site (field of view).

Pixels are stored raw, C-order (channels, height, width), as the bytes of ``dtype`` in a
binary column; Parquet's zstd compression shrinks them, and page checksums (CRC32) let ``inspect``
catch silent corruption. Raw bytes decode with a single
``np.frombuffer`` (no image codec in the stream's hot path); see the README for the
measurement against PNG bytes.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CHANNELS = ("nuclei", "er", "actin", "rna", "mito", "golgi")  # RxRx3 / Cell Painting order
PIXEL_DTYPES = ("uint8", "uint16", "float32")
# A row group holds whole wells and closes once its pixels reach GROUP_BYTES: a real
# plate's well (tens of MB) is a group of its own, so a curation, a selection of wells,
# reads only its wells' groups; the small wells of the synthetic worlds share a group, as
# each group read costs a fixed ~0.3 ms (measured: one-well groups of 200 kB read 2.4x
# slower). A well of more than ROWS_PER_GROUP sites is cut into groups of that many.
GROUP_BYTES = 2 << 20
ROWS_PER_GROUP = 16
WRITE_OPTIONS = dict(compression="zstd", write_page_checksum=True)  # every shard writer

SCHEMA = pa.schema(
    [
        ("experiment", pa.string()),
        ("plate", pa.string()),
        ("well", pa.string()),
        ("site", pa.int32()),
        ("perturbation", pa.string()),
        ("is_control", pa.bool_()),
        ("channels", pa.int32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("dtype", pa.string()),
        ("pixels", pa.binary()),
    ]
)
META_COLUMNS = [f.name for f in SCHEMA if f.name != "pixels"]
CHANNEL_KEY = b"scaling.channel_names"  # a shard's channel names, JSON, in its schema metadata
KEY_COLUMNS = ["experiment", "plate", "well"]


def shard_schema(channel_names) -> pa.Schema:
    """``SCHEMA`` carrying the names of the C axis (in order) as schema metadata."""
    return SCHEMA.with_metadata({CHANNEL_KEY: json.dumps(list(channel_names)).encode()})


def default_channel_names(n: int) -> tuple[str, ...]:
    """Names for a shard written without them: the RxRx3 order for 6 channels, else
    ch1..chN."""
    return CHANNELS if n == len(CHANNELS) else tuple(f"ch{i + 1}" for i in range(n))


def channel_names(schema: pa.Schema, channels: int) -> tuple[str, ...]:
    """The channel names a shard's schema records (``default_channel_names`` when it
    records none)."""
    raw = (schema.metadata or {}).get(CHANNEL_KEY)
    return tuple(json.loads(raw)) if raw else default_channel_names(channels)


def site_table(meta: list[dict], images: list[np.ndarray], names=None) -> pa.Table:
    """Build a shard table from per-site metadata and images of shape (C, H, W); ``names``
    are the channels' names (default ``default_channel_names``)."""
    cols = {name: [m[name] for m in meta] for name in KEY_COLUMNS + ["site", "perturbation"]}
    cols["is_control"] = [bool(m["is_control"]) for m in meta]
    cols["channels"] = [im.shape[0] for im in images]
    cols["height"] = [im.shape[1] for im in images]
    cols["width"] = [im.shape[2] for im in images]
    cols["dtype"] = [im.dtype.name for im in images]
    cols["pixels"] = [np.ascontiguousarray(im).tobytes() for im in images]
    n = images[0].shape[0] if images else len(CHANNELS)
    names = tuple(names) if names is not None else default_channel_names(n)
    if len(names) != n:
        raise ValueError(f"site_table: {len(names)} channel names for {n} channels")
    return pa.Table.from_pydict(cols, schema=shard_schema(names))


def decode_pixels(row_pixels: bytes, channels: int, height: int, width: int, dtype: str):
    """Bytes of one site -> array (C, H, W) of ``dtype`` (no copy)."""
    return np.frombuffer(row_pixels, dtype=dtype).reshape(channels, height, width)


def write_atomic(table: pa.Table, path: Path, row_group_size: int) -> None:
    """Write a Parquet file under a temporary name in the same folder, then rename it."""
    write_groups([table], path, row_group_size)


def well_runs(wells: list, site_bytes: list[int]) -> list[tuple[int, int]]:
    """Row ranges [start, end) of a shard's row groups, given each row's well key and pixel
    bytes (rows sorted by well): runs of whole wells, each closed once it holds
    ``GROUP_BYTES``; a well of more than ``ROWS_PER_GROUP`` sites is cut into groups of its
    own of that many."""
    starts = [i for i in range(len(wells)) if i == 0 or wells[i] != wells[i - 1]]
    runs, start, size = [], 0, 0
    for s, e in zip(starts, starts[1:] + [len(wells)], strict=True):
        if e - s > ROWS_PER_GROUP:
            runs += [(start, s)] if start < s else []
            runs += [(b, min(b + ROWS_PER_GROUP, e)) for b in range(s, e, ROWS_PER_GROUP)]
            start, size = e, 0
            continue
        size += sum(site_bytes[s:e])
        if size >= GROUP_BYTES:
            runs.append((start, e))
            start, size = e, 0
    return runs + ([(start, len(wells))] if start < len(wells) else [])


def write_shard(table: pa.Table, path: Path) -> None:
    """Write a shard (rows sorted by well) atomically, in row groups of whole wells
    (``well_runs``)."""
    wells = list(zip(*(table.column(c).to_pylist() for c in KEY_COLUMNS), strict=True))
    sizes = [len(p) for p in table.column("pixels").to_pylist()]
    groups = [table.slice(s, e - s) for s, e in well_runs(wells, sizes)]
    write_groups(groups or [table], path, None)


def write_groups(groups: list[pa.Table], path: Path, row_group_size: int | None) -> None:
    """Write tables as consecutive row groups of one Parquet file (each table one group,
    or split at ``row_group_size`` rows), under a temporary name in the same folder, then
    rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with pq.ParquetWriter(tmp, groups[0].schema, **WRITE_OPTIONS) as writer:
            for g in groups:
                writer.write_table(g, row_group_size=row_group_size or max(1, g.num_rows))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def shard_files(root: Path) -> list[Path]:
    """The dataset's shard files, sorted (temporary files of an interrupted write excluded)."""
    return sorted(
        p for p in (Path(root) / "shards").glob("*.parquet") if not p.name.startswith(".")
    )
