"""``scaling inspect``: validate every shard and summarise a dataset.

Checks, per file: readable Parquet (every row group is read, so truncation or corruption
is caught), the required columns, the channel count, a known pixel dtype, the pixel byte
count equal to channels x height x width x itemsize, finite values (float pixels), no
site twice. The first fault raises an InputError naming the file.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scaling.errors import InputError
from scaling.progress import bar
from scaling.shards.dataset import open_dataset, well_keys
from scaling.shards.format import CHANNEL_KEY, PIXEL_DTYPES, SCHEMA, channel_names


def check_shard(path: Path, channels: int | None, seen: set) -> list[dict]:
    """Validate one shard; returns its rows' metadata (no pixels). ``channels``: the count
    every site must have (None: as many as the channel names the shard records, if any)."""
    try:
        pf = pq.ParquetFile(path, page_checksum_verification=True)
    except Exception as e:
        raise InputError(f"{path}: unreadable Parquet file ({_short(e)})") from None
    missing = [n for n in SCHEMA.names if n not in pf.schema_arrow.names]
    if missing:
        raise InputError(f"{path}: missing columns {missing}")
    if channels is None and CHANNEL_KEY in (pf.schema_arrow.metadata or {}):
        channels = len(channel_names(pf.schema_arrow, 0))
    rows: list[dict] = []
    try:
        for batch in pf.iter_batches(batch_size=32):
            meta = batch.drop_columns(["pixels"]).to_pylist()
            lengths = pc.binary_length(batch.column("pixels")).to_pylist()
            for i, (m, n) in enumerate(zip(meta, lengths, strict=True)):
                where = f"{path}: site {m['experiment']}/{m['plate']}/{m['well']}/s{m['site']}"
                if channels is not None and m["channels"] != channels:
                    raise InputError(f"{where}: {m['channels']} channels, expected {channels}")
                if m["dtype"] not in PIXEL_DTYPES:
                    raise InputError(f"{where}: pixel dtype {m['dtype']!r} not in {PIXEL_DTYPES}")
                expect = m["channels"] * m["height"] * m["width"] * np.dtype(m["dtype"]).itemsize
                if n != expect:
                    raise InputError(
                        f"{where}: {n} pixel bytes, expected {expect} "
                        f"({m['channels']}x{m['height']}x{m['width']} {m['dtype']})"
                    )
                if m["dtype"].startswith("float"):
                    pix = np.frombuffer(batch.column("pixels")[i].as_py(), m["dtype"])
                    if not np.isfinite(pix).all():
                        raise InputError(f"{where}: non-finite pixel values")
                key = (m["experiment"], m["plate"], m["well"], m["site"])
                if key in seen:
                    raise InputError(f"{where}: the same site appears twice")
                seen.add(key)
                rows.append(m)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{path}: truncated or corrupt Parquet data ({_short(e)})") from None
    return rows


def inspect_dataset(path, channels: int | None = None, progress: bool = True) -> dict:
    """Check every shard (``check_shard``) and summarise the dataset; ``channels`` is the
    expected count, by default that of the channel names the shards record."""
    ds = open_dataset(path)
    rows: list[dict] = []
    seen: set = set()
    for f in bar(ds.files, desc="inspect", unit="shard", enabled=progress):
        rows += check_shard(f, channels, seen)
    names = ds.channel_names  # every shard readable: do they name the same channels?
    selected = ds.selected_keys()
    if selected is not None:
        rows = [r for r in rows if f"{r['experiment']}/{r['plate']}/{r['well']}" in selected]
    wells = {(r["experiment"], r["plate"], r["well"]): r for r in rows}
    shapes = Counter((r["channels"], r["height"], r["width"], r["dtype"]) for r in rows)
    summary = {
        "dataset": str(ds.root),
        "curation": None if ds.curation is None else ds.curation.get("strategy"),
        "shards": len(ds.files),
        "bytes": sum(f.stat().st_size for f in ds.files),
        "experiments": len({r["experiment"] for r in rows}),
        "plates": len({r["plate"] for r in rows}),
        "wells": len(wells),
        "sites": len(rows),
        "perturbations": len({r["perturbation"] for r in wells.values() if not r["is_control"]}),
        "control_wells": sum(r["is_control"] for r in wells.values()),
        "shapes": {f"{c}x{h}x{w} {d}": n for (c, h, w, d), n in shapes.items()},
        "channel_names": list(names),
    }
    if ds.wells is not None:
        missing = set(well_keys(ds.wells).to_pylist()) - {"/".join(k) for k in wells}
        if missing:
            raise InputError(
                f"{path}/wells.parquet: {len(missing)} selected wells are not in "
                f"the source shards (first: {sorted(missing)[0]})"
            )
    return summary


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__
