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
ROWS_PER_GROUP = 16  # a row group is a few MB: small enough to stream, large enough to compress
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


def write_atomic(table: pa.Table, path: Path, row_group_size: int = ROWS_PER_GROUP) -> None:
    """Write a Parquet file under a temporary name in the same folder, then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        pq.write_table(table, tmp, row_group_size=row_group_size, **WRITE_OPTIONS)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def shard_files(root: Path) -> list[Path]:
    """The dataset's shard files, sorted (temporary files of an interrupted write excluded)."""
    return sorted(
        p for p in (Path(root) / "shards").glob("*.parquet") if not p.name.startswith(".")
    )
