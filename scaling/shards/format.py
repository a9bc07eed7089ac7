"""The shard format: Parquet files with one row per site (field of view).

Pixels are stored raw, C-order (channels, height, width), as the bytes of ``dtype`` in a
binary column; Parquet's zstd compression shrinks them, and page checksums (CRC32) let ``inspect``
catch silent corruption. Raw bytes decode with a single
``np.frombuffer`` (no image codec in the stream's hot path); see the README for the
measurement against PNG bytes.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CHANNELS = ("nuclei", "er", "actin", "rna", "mito", "golgi")  # RxRx3 / Cell Painting order
PIXEL_DTYPES = ("uint8", "uint16", "float32")
# A row group holds the sites of one well, at most ROWS_PER_GROUP of them (a few MB of
# pixels): a curation, a selection of wells, then reads only its wells' row groups.
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
KEY_COLUMNS = ["experiment", "plate", "well"]


def site_table(meta: list[dict], images: list[np.ndarray]) -> pa.Table:
    """Build a shard table from per-site metadata and images of shape (C, H, W)."""
    cols = {name: [m[name] for m in meta] for name in KEY_COLUMNS + ["site", "perturbation"]}
    cols["is_control"] = [bool(m["is_control"]) for m in meta]
    cols["channels"] = [im.shape[0] for im in images]
    cols["height"] = [im.shape[1] for im in images]
    cols["width"] = [im.shape[2] for im in images]
    cols["dtype"] = [im.dtype.name for im in images]
    cols["pixels"] = [np.ascontiguousarray(im).tobytes() for im in images]
    return pa.Table.from_pydict(cols, schema=SCHEMA)


def decode_pixels(row_pixels: bytes, channels: int, height: int, width: int, dtype: str):
    """Bytes of one site -> array (C, H, W) of ``dtype`` (no copy)."""
    return np.frombuffer(row_pixels, dtype=dtype).reshape(channels, height, width)


def write_atomic(table: pa.Table, path: Path, row_group_size: int) -> None:
    """Write a Parquet file under a temporary name in the same folder, then rename it."""
    write_groups([table], path, row_group_size)


def well_runs(wells: list) -> list[tuple[int, int]]:
    """Row ranges [start, end) of a shard's row groups, given each row's well key (rows
    sorted by well): each the sites of one well, at most ``ROWS_PER_GROUP`` of them."""
    starts = [i for i in range(len(wells)) if i == 0 or wells[i] != wells[i - 1]]
    bounds = [
        b
        for s, e in zip(starts, starts[1:] + [len(wells)], strict=True)
        for b in range(s, e, ROWS_PER_GROUP)
    ]
    return list(zip(bounds, bounds[1:] + [len(wells)], strict=True))


def write_shard(table: pa.Table, path: Path) -> None:
    """Write a shard (rows sorted by well) atomically, one row group per well
    (``well_runs``)."""
    wells = list(zip(*(table.column(c).to_pylist() for c in KEY_COLUMNS), strict=True))
    groups = [table.slice(s, e - s) for s, e in well_runs(wells)]
    write_groups(groups or [table], path, ROWS_PER_GROUP)


def write_groups(groups: list[pa.Table], path: Path, row_group_size: int) -> None:
    """Write tables as consecutive row groups (split at ``row_group_size`` rows) of one
    Parquet file, under a temporary name in the same folder, then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with pq.ParquetWriter(tmp, groups[0].schema, **WRITE_OPTIONS) as writer:
            for g in groups:
                writer.write_table(g, row_group_size=row_group_size)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def shard_files(root: Path) -> list[Path]:
    """The dataset's shard files, sorted (temporary files of an interrupted write excluded)."""
    return sorted(
        p for p in (Path(root) / "shards").glob("*.parquet") if not p.name.startswith(".")
    )
