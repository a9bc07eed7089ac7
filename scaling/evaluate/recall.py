"""Aggregation and known-relationship recall (ARCHITECTURE section 4).

- ``aggregate``: a perturbation's embedding is the mean of its wells (controls excluded).
- ``relationship_recall``: per source, the share of its pairs whose cosine lies in the
  tails (at or below the 5th or at or above the 95th percentile) of the null of all
  unordered pairs of distinct perturbations.

Percentiles are numpy's default (linear interpolation, Hyndman-Fan type 7): with the n
null cosines sorted ``v_0 <= ... <= v_{n-1}``, the q-th percentile is
``v_k + g (v_{k+1} - v_k)`` where ``h = (n - 1) q / 100``, ``k = floor(h)``, ``g = h - k``.
A cosine with a zero vector is 0.

Whole-genome scale (18,000 perturbations, 162M pairs): the null is never materialised or
sorted. ``null_percentiles`` brackets each needed order statistic with a seeded sample of
pairs, then makes one pass over the upper-triangular tiles of the float32 Gram matrix,
counting the values below each bracket and keeping the few inside it; the exact order
statistics are then selected (``np.partition``) among those. A bracket that misses (a
sample far off, about 1e-6 per bracket) is widened and the pass repeated, so the result
is exact whatever the sample.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from scaling.evaluate.tvn import one_blas_thread

LOW, HIGH = 5.0, 95.0  # the recall tails (percentiles of the null)
CHANCE = (LOW + 100.0 - HIGH) / 100.0  # a random map's recall
TILE = 256  # Gram rows per tile (18 MB of float32 for 18,000 perturbations)
SAMPLE = 1 << 16  # pairs sampled to bracket the percentiles
Z = 5.0  # bracket half-width in binomial standard deviations
DIRECT = 1 << 22  # nulls up to this many pairs are computed whole and np.percentile'd


# ---------------------------------------------------------------- aggregation


def aggregate(wells: pd.DataFrame, X: np.ndarray) -> tuple[pd.Index, np.ndarray]:
    """Mean well embedding per non-control perturbation (ARCHITECTURE section 4).

    wells (n rows: perturbation, is_control), X (n, D) -> (names, M): a sorted Index of
    the P non-control perturbations and M float64 (P, D), row i the mean of name i's wells.
    """
    ctrl = wells["is_control"].to_numpy(dtype=bool)
    pert = wells["perturbation"].to_numpy()[~ctrl]
    if len(pert) == 0:
        raise ValueError("no non-control wells to aggregate")
    codes, names = pd.factorize(pert, sort=True)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=len(names))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rows = np.flatnonzero(~ctrl)[order]
    sums = np.add.reduceat(np.asarray(X)[rows], starts, axis=0, dtype=np.float64)
    return pd.Index(names, name="perturbation"), sums / counts[:, None]


def unit_rows(M: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Rows scaled to norm 1 (zero rows stay zero, so their cosines are 0)."""
    M = np.asarray(M)
    norm = np.sqrt(np.einsum("ij,ij->i", M, M, dtype=np.float64))[:, None]
    return (M / np.where(norm > 0, norm, 1.0)).astype(dtype, copy=False)


# ---------------------------------------------------------------- null percentiles


def _lerp(a: float, b: float, g: float) -> float:
    """numpy's interpolation between neighbouring order statistics (``np.percentile``)."""
    d = b - a
    return b - d * (1 - g) if g >= 0.5 else a + d * g


def threads() -> int:
    """Threads for the tile passes: the CPUs this process may use, at most 4."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


def tile_map(fn, items) -> list:
    """``[fn(x) for x in items]`` on ``threads()`` threads, BLAS one-threaded in each:
    numpy releases the GIL in its passes, so tiles of a Gram matrix are computed and
    counted side by side (and threaded BLAS under threads would only oversubscribe)."""
    with one_blas_thread(), ThreadPoolExecutor(threads()) as pool:
        return list(pool.map(fn, items))


def _rows(U: np.ndarray, a: int, tile: int, local) -> np.ndarray:
    """Rows a..a+tile of ``U @ U.T`` from column a on (float32, in the thread's reused
    buffer, valid until its next tile): row r's pairs with later rows start at column
    r - a + 1, so the tiles together hold each pair (i < j) once."""
    n, m = min(tile, len(U) - a), len(U) - a
    if getattr(local, "buf", None) is None or local.buf.size < n * m:
        local.buf = np.empty(n * m, dtype=np.float32)
    G = local.buf[: n * m].reshape(n, m)
    np.dot(U[a : a + n], U[a:].T, out=G)
    return G


def _pairs(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (i, j > i) of a tile of ``_rows``, G (n, m >= n): the strict upper
    triangle of its first n columns (1-D) and its other columns (a view)."""
    n = len(G)
    return G[:, :n][np.triu(np.ones((n, n), bool), 1)], G[:, n:]


def _all_pairs(U: np.ndarray, tile: int) -> np.ndarray:
    """Every cosine of distinct pairs of rows of U (float32), concatenated."""
    local = threading.local()

    def pairs(a: int) -> np.ndarray:
        return np.concatenate([t.ravel() for t in _pairs(_rows(U, a, tile, local))])

    return np.concatenate(tile_map(pairs, range(0, len(U), tile)))


class NullScan:
    """One pass over the null for the given brackets [a, b], tile by tile: per bracket,
    the count of values below a and the values inside (a narrow band: cheap to keep,
    unlike a whole 5% tail). Tiles may come from any pass over the Gram rows (``_scan``'s
    own, or mAP's, which needs every row anyway) and from several threads."""

    def __init__(self, brackets: list[tuple[float, float]]):
        self.brackets = brackets
        self.parts = []

    def tile(self, G: np.ndarray) -> None:
        """Count the pairs (i, j > i) of n Gram rows: G (n, m) float32, the cosines of
        rows a..a+n with rows a..a+m (the columns from the first row's own on)."""
        below = np.zeros(len(self.brackets), np.int64)
        kept = [[] for _ in self.brackets]
        for t in _pairs(G):
            x1, x2 = np.empty(t.shape, bool), np.empty(t.shape, bool)
            for m, (a_, b_) in enumerate(self.brackets):
                below[m] += np.count_nonzero(np.less(t, a_, out=x1))
                # a <= b, so t < a implies t <= b: the band a <= t <= b is (t <= b) xor (t < a)
                np.logical_xor(x1, np.less_equal(t, b_, out=x2), out=x1)
                kept[m].append(t[x1])
        self.parts.append((below, [np.concatenate(k) for k in kept]))

    def result(self) -> tuple[list[int], list[np.ndarray]]:
        nb = range(len(self.brackets))
        below = [int(sum(p[0][m] for p in self.parts)) for m in nb]
        kept = [np.concatenate([p[1][m] for p in self.parts]) for m in nb]
        return below, kept


def _scan(U: np.ndarray, brackets, tile: int):
    """``NullScan`` of every pair, over the staircase of Gram rows (``_rows``)."""
    scan, local = NullScan(brackets), threading.local()

    tile_map(lambda a: scan.tile(_rows(U, a, tile, local)), range(0, len(U), tile))
    return scan.result()


def _check(U: np.ndarray) -> np.ndarray:
    U = np.ascontiguousarray(U, dtype=np.float32)
    if len(U) < 2:
        raise ValueError(f"the recall null needs at least 2 perturbations, got {len(U)}")
    if not np.isfinite(U).all():
        raise ValueError("the map has non-finite values")
    return U


def _sample(U: np.ndarray, sample: int, seed: int) -> np.ndarray:
    """Sorted cosines of ``sample`` seeded random pairs of distinct rows."""
    rng = np.random.default_rng([seed, 7])
    i = rng.integers(0, len(U), sample)
    j = rng.integers(0, len(U) - 1, sample)
    j += j >= i  # uniform over ordered pairs of distinct rows
    return np.sort(np.einsum("ij,ij->i", U[i], U[j]))


def _brackets(s: np.ndarray, q, z: float) -> list[tuple[float, float]]:
    """Per percentile of q, a bracket [a, b] of the sample s that holds it unless the
    sample is z binomial standard deviations off."""
    brackets = []
    for p in np.asarray(q) / 100.0:
        half = z * math.sqrt(max(p * (1 - p), 1.0 / len(s)) / len(s))
        lo, hi = math.floor((p - half) * len(s)), math.ceil((p + half) * len(s))
        a = float(s[lo]) if lo >= 0 else -np.inf
        b = float(s[hi]) if hi < len(s) else np.inf
        brackets.append((a, b))
    return brackets


def null_scan(
    U: np.ndarray, q=(LOW, HIGH), *, sample=SAMPLE, z=Z, direct=DIRECT, seed=0
) -> NullScan | None:
    """The first ``NullScan`` that ``null_percentiles`` (same arguments) would make, for a
    caller whose own pass over every Gram row can carry it (mAP's) and then hand it to
    ``null_percentiles(first=...)``; None where the null is small enough to be sorted."""
    U = _check(U)
    if len(U) * (len(U) - 1) // 2 <= direct:
        return None
    return NullScan(_brackets(_sample(U, sample, seed), q, z))


def null_percentiles(
    U: np.ndarray,
    q=(LOW, HIGH),
    *,
    tile: int = TILE,
    sample: int = SAMPLE,
    z: float = Z,
    direct: int = DIRECT,
    seed: int = 0,
    first: NullScan | None = None,
) -> np.ndarray:
    """Percentiles ``q`` of the cosines of all unordered pairs of distinct rows of ``U``.

    U (P, D) float32 unit rows. numpy's percentile (module doc) of the float32 null: up
    to ``direct`` pairs by ``np.percentile`` itself; beyond, the same two order statistics
    found by bracketing and selection and interpolated the same way (in float64), without
    materialising the null. ``first``: the first round's scan, made by ``null_scan`` and
    filled by the caller's own pass over every pair.
    """
    U = _check(U)
    n = len(U) * (len(U) - 1) // 2
    q = np.atleast_1d(np.asarray(q, dtype=np.float64))
    if n <= direct:
        return np.percentile(_all_pairs(U, tile), q)
    h = (n - 1) * (q / 100.0)
    k = np.floor(h).astype(np.int64)
    need = [(int(ki), int(min(ki + 1, n - 1))) for ki in k]  # ranks each percentile reads
    s = _sample(U, sample, seed)
    found: dict[int, float] = {}
    todo = list(range(len(q)))
    while todo:
        brackets = _brackets(s, q[todo], z)
        if first is not None and first.brackets == brackets:
            below, values = first.result()
        else:
            below, values = _scan(U, brackets, tile)
        first = None
        missed = []
        for m, base, v in zip(todo, below, values, strict=True):
            ranks = need[m]
            if base <= min(ranks) and max(ranks) < base + len(v):
                for r in set(ranks):
                    found[r] = float(np.partition(v, r - base)[r - base])
            else:
                missed.append(m)
        todo = missed
        z *= 4.0  # a missed bracket is widened (at most a few rounds to +-inf)
    return np.array(
        [
            _lerp(found[a], found[b], float(hm - km))
            for (a, b), hm, km in zip(need, h, k, strict=True)
        ]
    )


# ---------------------------------------------------------------- recall


def relationship_pairs(names, relationships: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per source, its pairs of map rows (int64 (m, 2), i < j), both genes present,
    deduplicated as unordered pairs of distinct perturbations."""
    index = pd.Index(names)
    if not index.is_unique:
        raise ValueError("perturbation names of the map are not unique")
    P = len(index)
    ia = index.get_indexer(relationships["gene_a"].astype(str))
    ib = index.get_indexer(relationships["gene_b"].astype(str))
    keep = (ia >= 0) & (ib >= 0) & (ia != ib)
    key = np.minimum(ia, ib).astype(np.int64) * P + np.maximum(ia, ib)
    source = relationships["source"].astype(str).to_numpy()
    out = {}
    for src in sorted(set(source)):
        u = np.unique(key[keep & (source == src)])
        out[src] = np.stack([u // P, u % P], axis=1)
    return out


def pair_cosines(U: np.ndarray, u: np.ndarray, v: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Cosines of the row pairs (u_k, v_k) of unit rows U: (m,) in U's dtype, gathered in
    chunks that stay in cache (one gather of all pairs' rows is 2 x m x D floats)."""
    out = np.empty(len(u), dtype=U.dtype)
    for c in range(0, len(u), chunk):
        out[c : c + chunk] = np.einsum("ij,ij->i", U[u[c : c + chunk]], U[v[c : c + chunk]])
    return out


def recall_details(
    names, M: np.ndarray, relationships: pd.DataFrame, pairs=None, **null_kwargs
) -> dict:
    """``relationship_recall`` with its working: thresholds and pair counts per source.
    ``pairs``: ``relationship_pairs(names, relationships)`` if the caller has it;
    ``null_kwargs`` go to ``null_percentiles``."""
    U = unit_rows(M)
    lo, hi = null_percentiles(U, (LOW, HIGH), **null_kwargs)
    recall, counts = {}, {}
    if pairs is None:
        pairs = relationship_pairs(names, relationships)
    for src, ij in pairs.items():
        counts[src] = len(ij)
        if len(ij):
            cos = pair_cosines(U, ij[:, 0], ij[:, 1])
            recall[src] = float(np.mean((cos <= lo) | (cos >= hi)))
    return {"recall": recall, "pairs": counts, "null_percentiles": [float(lo), float(hi)]}


def relationship_recall(
    names, M: np.ndarray, relationships: pd.DataFrame, **null_kwargs
) -> dict[str, float]:
    """Known-relationship recall per source (ARCHITECTURE section 4).

    names (P,) the map's perturbations (non-control), M (P, D) their embeddings,
    relationships with columns source, gene_a, gene_b. Null N: cosines of all unordered
    pairs of distinct perturbations; Q: the source's pairs with both genes in the map,
    deduplicated; recall = share of Q at or below N's 5th percentile or at or above its
    95th (numpy's linear percentile, module doc). Sources with no pair in the map are
    left out. A random map scores about ``CHANCE`` = 0.10.
    """
    return recall_details(names, M, relationships, **null_kwargs)["recall"]
