"""Cutting crops from sites, site identity and the hold-out rule.

Pure numpy/pyarrow functions: the Ray Data pipeline (``pipeline.py``) maps
:func:`crop_table` over parts of shards, and the validation set reuses the same rules.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from scaling.shards.dataset import well_keys

_M = np.uint64(0xFFFFFFFFFFFFFFFF)
GEOMETRY = ["channels", "height", "width", "dtype"]


def site_ids(table: pa.Table) -> np.ndarray:
    """A stable 63-bit id per site row (hash of experiment/plate/well/site)."""
    keys = well_keys(table).to_pylist()
    sites = table.column("site").to_pylist()
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(f"{k}/{s}".encode(), digest_size=8).digest(), "little")
            >> 1
            for k, s in zip(keys, sites, strict=True)
        ],
        dtype=np.int64,
    )


def held_out(ids: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """Whether each site is in the validation hold-out (a seeded hash; same on every worker)."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) ^ np.uint64(seed * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9) & _M
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB) & _M
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction


def decode_sites(table: pa.Table, rows=None) -> list[np.ndarray]:
    """Pixels of the given rows (default: all) -> arrays (C, H, W), zero-copy views of the
    Arrow buffers."""
    views = []
    for chunk in table.column("pixels").chunks:
        offsets = np.frombuffer(chunk.buffers()[1], np.int32)[chunk.offset :][: len(chunk) + 1]
        data = np.frombuffer(chunk.buffers()[2], np.uint8)
        views += [data[offsets[i] : offsets[i + 1]] for i in range(len(chunk))]
    c, h, w, d = (table.column(n).to_numpy(zero_copy_only=False) for n in GEOMETRY)
    rows = range(table.num_rows) if rows is None else rows
    return [views[i].view(d[i]).reshape(c[i], h[i], w[i]) for i in rows]


def training_rows(
    table: pa.Table, ids: np.ndarray, seed: int, val_fraction: float, selected=None
) -> np.ndarray:
    """Which site rows the training stream keeps: not held out, and in the selection."""
    keep = ~held_out(ids, seed, val_fraction)
    if selected is not None:
        keep &= np.fromiter((k in selected for k in well_keys(table).to_pylist()), bool, len(ids))
    return keep


def crop_table(
    table: pa.Table,
    rng: np.random.Generator,
    crop: int,
    crops_per_site: int,
    channels: int,
    dtype: str,
    val_fraction: float,
    seed: int,
    selected: frozenset | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sites -> ``crops_per_site`` random crops of each training site, shuffled.

    Returns crops (N, C, crop, crop) of ``dtype`` and their site ids (N,) int64. Sites outside
    the selection and held-out validation sites are dropped. Each crop is written straight
    into a shuffled slot (the batch-level shuffle costs no extra copy).
    """
    ids = site_ids(table)
    rows = np.flatnonzero(training_rows(table, ids, seed, val_fraction, selected))
    k = crops_per_site
    n = len(rows) * k
    out = np.empty((n, channels, crop, crop), dtype=dtype)
    slot = rng.permutation(n)
    for site, slots in zip(decode_sites(table, rows), slot.reshape(-1, k).tolist(), strict=True):
        _, h, w = site.shape
        ys = rng.integers(0, h - crop + 1, k).tolist()
        xs = rng.integers(0, w - crop + 1, k).tolist()
        # one copy a crop, slice to slot (a gather of windows, then a scatter, took 2x)
        for j, y, x in zip(slots, ys, xs, strict=True):
            out[j] = site[:, y : y + crop, x : x + crop]
    site_of = np.empty(n, np.int64)
    site_of[slot] = np.repeat(ids[rows], k)
    return out, site_of


def grid_tiles(site: np.ndarray, crop: int) -> np.ndarray:
    """Non-overlapping crop x crop tiles covering a site, edge remainders dropped: (T, C, crop, crop)."""
    c, h, w = site.shape
    ny, nx = h // crop, w // crop
    t = site[:, : ny * crop, : nx * crop].reshape(c, ny, crop, nx, crop)
    return t.transpose(1, 3, 0, 2, 4).reshape(ny * nx, c, crop, crop)
