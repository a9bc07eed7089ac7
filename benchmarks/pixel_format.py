"""How to store pixels: raw bytes + Parquet zstd (ours) against PNG bytes per channel.

Reads the shards of a dataset, re-encodes every site as six PNGs in memory, then times
decoding every site both ways and cutting ``crops_per_site`` 64 px crops (single process).
Prints one bench line (contract keys) plus the bytes each format takes.

    .venv/bin/python benchmarks/pixel_format.py DATASET
"""

from __future__ import annotations

import io
import json
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from scaling.shards.dataset import open_dataset
from scaling.stream.crops import decode_sites

CROP, PER_SITE = 64, 4


def png_bytes(site: np.ndarray) -> list[bytes]:
    out = []
    for ch in site:
        buf = io.BytesIO()
        Image.fromarray(ch).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def crops(site: np.ndarray, rng) -> int:
    _, h, w = site.shape
    for _ in range(PER_SITE):
        y, x = rng.integers(0, h - CROP + 1), rng.integers(0, w - CROP + 1)
        np.ascontiguousarray(site[:, y : y + CROP, x : x + CROP])
    return PER_SITE


def main(path: str) -> None:
    files = open_dataset(path).files
    pngs = [png_bytes(s) for f in files for s in decode_sites(pq.read_table(f))]
    png_size = sum(len(b) for site in pngs for b in site)
    png_table_size = 0
    for i in range(0, len(pngs), 16):  # the PNG variant as a shard would store it
        t = pa.table({"pixels": [b"".join(s) for s in pngs[i : i + 16]]})
        sink = pa.BufferOutputStream()
        pq.write_table(t, sink, compression="none")
        png_table_size += sink.getvalue().size
    rng = np.random.default_rng(0)

    t0 = time.perf_counter()
    n = sum(crops(s, rng) for f in files for s in decode_sites(pq.read_table(f)))
    raw = (time.perf_counter() - t0) * 1e4 / n
    t0 = time.perf_counter()
    n = sum(crops(np.stack([np.asarray(Image.open(io.BytesIO(b))) for b in s]), rng) for s in pngs)
    png = (time.perf_counter() - t0) * 1e4 / n
    raw_size = sum(f.stat().st_size for f in files)
    print(
        json.dumps(
            {
                "bench": "pixel_format",
                "case": "raw+zstd vs png",
                "ours": raw,
                "anchor": "png per channel",
                "anchor_value": png,
                "ratio": raw / png,
                "unit": "s/10k crops",
                "raw_zstd_bytes": raw_size,
                "png_bytes": png_table_size,
                "png_payload_bytes": png_size,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
