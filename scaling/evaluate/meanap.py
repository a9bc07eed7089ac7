"""Mean average precision (mAP) as ``copairs`` computes it (ARCHITECTURE section 4).

- Phenotypic activity (``phenotypic_activity``): each well of a non-control perturbation is
  a query; its positives are the other wells of its perturbation on other plates, its
  negatives the control wells of its own plate (copairs' ``neg_sameby=["Metadata_Plate"]``,
  as the JUMP consortium runs it); a perturbation's mAP is the mean AP of its wells.
- Phenotypic consistency (``phenotypic_consistency``): on the aggregated map, per source of
  the relationships table, each perturbation with a partner is a query; its positives are
  its partners, its negatives every other perturbation of the map.

AP of a query = mean of precision@k over the ranks k of its positives, all its candidates
ranked by cosine similarity. copairs' ranking is reproduced exactly: the key is the
float32 ``1 - sim`` (sims rounded to float32 from float64 cosines), ties between a positive
and a negative go to the positive (copairs' stable ``lexsort``). So AP only needs, per
(query, positive) pair, the number of negatives whose key is strictly smaller
(``ap_from_counts``); candidates are never enumerated pair by pair.

p-values follow copairs' ``get_map_pvalue``: per configuration (positives k, candidates n)
a null of ``null_size`` APs of k ranks drawn at random among n; a group's null is the
float32 mean of its members' null rows; p = (#null > mAP + 1) / (null_size + 1); then
Benjamini-Hochberg (statsmodels' ``fdr_bh``). The null rows are drawn here
(``null_aps``: k distinct ranks, O(k) per draw, seeded per configuration) rather than by
copairs' ``random_ap`` (a full shuffle of n per draw: 0.67 s per configuration of a
genome-scale map, ~48 configurations); the p-value and FDR arithmetic given the same null
rows equals copairs' (tests/test_meanap.py feeds it copairs' own nulls).
"""

from __future__ import annotations

import functools
import threading

import numba
import numpy as np
import pandas as pd

from scaling.evaluate.recall import relationship_pairs, tile_map, unit_rows

NULL_SIZE = 10000  # null draws per configuration (p-values resolve down to 1e-4)
THRESHOLD = 0.05  # corrected p-value below which a perturbation counts as significant
CELLS = 4096  # most cells per query row when counting (``count_below``)
SPAN = 2.0**-10  # narrowest key range the cells cover (rows with one positive)
TILE = 128  # query rows per Gram tile (each tile's product reads all of the map once)
CHUNK = 4096  # (query, positive) pairs per gather


# ---------------------------------------------------------------- ranking


def unit(X: np.ndarray) -> np.ndarray:
    """Rows of X (n, D) scaled to norm 1 in float64 (zero rows stay zero)."""
    X = np.asarray(X, dtype=np.float64)
    norm = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norm > 0, norm, 1.0)


def ap_from_counts(query: np.ndarray, above: np.ndarray, n_queries: int) -> np.ndarray:
    """AP per query from its positives' counts of better-ranked negatives.

    query (m,) int query index of each (query, positive) pair, above (m,) the number of
    negatives ranked before that positive -> (n_queries,) float64 AP, NaN for a query
    without positives. Sorted by ``above``, the i-th positive (1-based) has rank
    i + above, so AP = mean_i i / (i + above_i).
    """
    order = np.lexsort((above, query))
    q, a = query[order], above[order].astype(np.float64)
    counts = np.bincount(q, minlength=n_queries)
    start = np.cumsum(counts) - counts
    i = np.arange(1, len(q) + 1) - np.repeat(start, counts)
    sums = np.bincount(q, weights=i / (i + a), minlength=n_queries)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def _rank_in_row(row: np.ndarray, t: np.ndarray, ref_row: np.ndarray, ref: np.ndarray):
    """For each (row, t): the number of (ref_row, ref) entries with the same row and
    ref < t (float32 ``1 - cos`` keys: multiples of 2^-24 in [-1, 3], so
    ``row * 8 + key + 1`` in float64 orders them exactly)."""
    r = np.sort(ref_row * 8.0 + (ref.astype(np.float64) + 1.0))
    lo = np.searchsorted(r, row * 8.0, side="left")
    return np.searchsorted(r, row * 8.0 + (t.astype(np.float64) + 1.0), side="left") - lo


@numba.njit(inline="always")
def _cell(x, lo, scale, top):
    """The cell of key x in a row binned from ``lo`` (underflow 0, overflow ``top``):
    monotone in x, the same arithmetic for entries and thresholds."""
    return int(min(max((x - lo) * scale + np.float32(1), np.float32(0)), top))


@numba.njit(nogil=True, cache=True)
def _count_rows(K, start, T, out):  # pragma: no cover (compiled; count_below's test runs it)
    """``count_below``'s kernel. K (B, P) float32; T the thresholds sorted within each row,
    row b's at T[start[b]:start[b + 1]]; out[i] = entries of T[i]'s row below T[i]."""
    cells = min(CELLS, max(16, K.shape[1] // 4))  # rows of few entries: few cells to clear
    top = np.float32(cells + 1)
    hist = np.zeros(cells + 2, np.int64)
    first = np.empty(cells + 2, np.int64)
    last = np.empty(cells + 2, np.int64)
    for b in range(K.shape[0]):
        t = T[start[b] : start[b + 1]]
        own = out[start[b] : start[b + 1]]
        if len(t) == 0:
            continue
        lo = t[0]
        scale = np.float32(cells - 1) / max(t[-1] - lo, np.float32(SPAN))  # t[-1]: not overflow
        cell = np.array([_cell(x, lo, scale, top) for x in t])
        first[:] = -1
        for j in range(len(t) - 1, -1, -1):  # the thresholds of each cell: first..last
            first[cell[j]] = j
        for j in range(len(t)):
            last[cell[j]] = j + 1
        hist[:] = 0
        own[:] = 0
        for x in K[b]:
            g = _cell(x, lo, scale, top)
            hist[g] += 1
            if first[g] >= 0:  # a threshold's own cell: compared exactly
                for j in range(first[g], last[g]):
                    own[j] += x < t[j]
        below = 0
        for g in range(cells + 2):  # -> entries in lower cells
            hist[g], below = below, below + hist[g]
        for j in range(len(t)):
            own[j] += hist[cell[j]]


def count_below(K: np.ndarray, rows: np.ndarray, t: np.ndarray) -> np.ndarray:
    """For each threshold ``t`` of row ``rows`` of K, the number of entries of that row
    strictly smaller. K (B, P) float32 keys (``+inf`` for excluded entries); rows (m,)
    int, t (m,) float32 -> (m,) int64.

    One compiled pass over each row instead of a sort: its entries are binned monotonically
    over the range of its thresholds (``CELLS`` cells, underflow and overflow cells at the
    ends), and an entry that falls in a threshold's own cell is compared with it exactly.
    """
    K = np.ascontiguousarray(K, dtype=np.float32)
    t = np.asarray(t, dtype=np.float32)
    order = np.lexsort((t, rows))
    start = np.searchsorted(rows[order], np.arange(len(K) + 1))
    out = np.empty(len(t), dtype=np.int64)
    _count_rows(K, start, t[order], out)
    res = np.empty_like(out)
    res[order] = out
    return res


# ---------------------------------------------------------------- the two benchmarks


def activity_pairs(wells: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Ordered (query, positive) well pairs of phenotypic activity: wells of the same
    non-control perturbation on different plates. wells (n rows) -> two (m,) int arrays."""
    ctrl = wells["is_control"].to_numpy(dtype=bool)
    pert = pd.factorize(wells["perturbation"].astype(str))[0]
    plate = pd.factorize(wells["plate"].astype(str))[0]
    idx = np.flatnonzero(~ctrl)
    idx = idx[np.argsort(pert[idx], kind="stable")]
    _, start, size = np.unique(pert[idx], return_index=True, return_counts=True)
    reps = np.repeat(size, size)  # per well (in idx order): its group's size
    first = np.repeat(start, size)
    q = np.repeat(np.arange(len(idx)), reps)
    p = np.repeat(first, reps) + (np.arange(len(q)) - np.repeat(np.cumsum(reps) - reps, reps))
    q, p = idx[q], idx[p]
    keep = plate[q] != plate[p]
    return q[keep], p[keep]


def activity_ap(wells: pd.DataFrame, X: np.ndarray) -> pd.DataFrame:
    """AP of every query well (phenotypic activity, module doc).

    wells (n rows: perturbation, plate, is_control), X (n, D) -> one row per well with a
    positive: well (row of ``wells``), perturbation, average_precision, n_pos_pairs,
    n_total_pairs (positives + the controls of its plate).
    """
    q, p = activity_pairs(wells)
    ctrl = wells["is_control"].to_numpy(dtype=bool)
    plate = pd.factorize(wells["plate"].astype(str))[0]
    U = unit(X)
    t = np.empty(len(q), dtype=np.float32)
    for c in range(0, len(q), CHUNK):  # in chunks: gathered rows stay in cache
        qc, pc = q[c : c + CHUNK], p[c : c + CHUNK]
        t[c : c + CHUNK] = np.float32(1) - np.einsum("ij,ij->i", U[qc], U[pc]).astype(np.float32)
    above = np.zeros(len(q), dtype=np.int64)
    n_neg = np.zeros(len(wells), dtype=np.int64)
    order = np.argsort(plate[q], kind="stable")
    bounds = np.searchsorted(plate[q][order], np.arange(plate.max() + 2))
    for pl in range(plate.max() + 1):
        pairs = order[bounds[pl] : bounds[pl + 1]]
        negs = np.flatnonzero(ctrl & (plate == pl))
        if len(pairs) == 0 or len(negs) == 0:
            continue
        queries, local = np.unique(q[pairs], return_inverse=True)
        K = np.float32(1) - (U[queries] @ U[negs].T).astype(np.float32)
        above[pairs] = count_below(K, local, t[pairs])
        n_neg[queries] = len(negs)
    queries, local = np.unique(q, return_inverse=True)
    ap = ap_from_counts(local, above, len(queries))
    n_pos = np.bincount(local)
    return pd.DataFrame(
        {
            "well": queries,
            "perturbation": wells["perturbation"].astype(str).to_numpy()[queries],
            "average_precision": ap,
            "n_pos_pairs": n_pos,
            "n_total_pairs": n_pos + n_neg[queries],
        }
    )


def _starts(v: np.ndarray) -> np.ndarray:
    """Positions where a sorted array's runs of equal values start."""
    return np.flatnonzero(np.r_[True, v[1:] != v[:-1]]) if len(v) else np.zeros(0, np.int64)


def _sorted_unique(v: np.ndarray) -> np.ndarray:
    """``np.unique`` of an integer array by one sort (faster here than its hash)."""
    v = np.sort(v)
    return v[_starts(v)]


def consistency_ap(
    names, M: np.ndarray, relationships: pd.DataFrame, exact: bool = False, pairs=None, null=None
) -> dict[str, pd.DataFrame]:
    """AP of every query perturbation per source (phenotypic consistency, module doc).

    names (P,) the map's perturbations, M (P, D) their (TVN-corrected, aggregated)
    embeddings, relationships (source, gene_a, gene_b) -> {source: one row per query:
    perturbation, average_precision, n_pos_pairs, n_total_pairs (= P - 1)}. The Gram
    rows of all queries are computed once, in tiles of ``TILE`` rows, for every source,
    in float32 from recall's unit rows (cosines that agree to float32 rounding may then
    order differently from copairs'); ``exact=True`` computes them in float64 rounded to
    float32, copairs' keys exactly, at twice the cost. ``null``: a ``recall.NullScan``
    that the pass fills with every pair (all rows are then computed), so that recall's
    null needs no pass of its own.
    """
    P = len(names)
    srcs = {
        s: (np.r_[ij[:, 0], ij[:, 1]], np.r_[ij[:, 1], ij[:, 0]])
        for s, ij in (pairs or relationship_pairs(names, relationships)).items()
    }
    key = _sorted_unique(
        np.concatenate([np.zeros(0, np.int64), *(i * P + j for i, j in srcs.values())])
    )
    allp = np.stack([key // P, key % P], axis=1)  # every (query, partner), sorted
    queries = allp[_starts(allp[:, 0]), 0] if null is None else np.arange(P)
    U = unit(M) if exact else unit_rows(M)
    below = np.zeros(len(allp), dtype=np.int64)  # all other perturbations before each pair
    tkey = np.zeros(len(allp), dtype=np.float32)
    local_buf = threading.local()

    def tile(a: int) -> None:
        rows = queries[a : a + TILE]
        if getattr(local_buf, "K", None) is None:
            local_buf.K = np.empty((min(TILE, len(queries)), P), dtype=np.float32)
        K = local_buf.K[: len(rows)]
        if exact:
            K[...] = U[rows] @ U.T
        else:
            np.dot(U[rows], U.T, out=K)
        if null is not None:  # rows are a..a+n here: their pairs (i, j > i), for recall
            null.tile(K[:, a:])
        np.subtract(np.float32(1), K, out=K)
        K[np.arange(len(rows)), rows] = np.inf  # a query is not its own candidate
        s, e = np.searchsorted(allp[:, 0], [rows[0], rows[-1] + 1])
        local = np.searchsorted(rows, allp[s:e, 0])
        tkey[s:e] = K[local, allp[s:e, 1]]
        below[s:e] = count_below(K, local, tkey[s:e])

    tile_map(tile, range(0, len(queries), TILE))  # tiles write disjoint slices
    out = {}
    for src, (i, j) in srcs.items():
        at = np.searchsorted(key, np.sort(i * P + j))
        qi = allp[at, 0]
        t = tkey[at]
        pos_before = _rank_in_row(qi, t, qi, t)
        first = _starts(qi)  # qi is sorted
        qs, local = qi[first], np.repeat(np.arange(len(first)), np.diff(np.r_[first, len(qi)]))
        n_pos = np.bincount(local)
        out[src] = pd.DataFrame(
            {
                "perturbation": np.asarray(names)[qs],
                "average_precision": ap_from_counts(local, below[at] - pos_before, len(qs)),
                "n_pos_pairs": n_pos,
                "n_total_pairs": np.full(len(qs), P - 1),
            }
        )
    return out


# ---------------------------------------------------------------- p-values and FDR


def _sort_rows(r: np.ndarray, n: int) -> np.ndarray:
    """Each row of r (m, k) ints in [0, n) sorted: one flat sort of row-offset values
    (many short rows sort far faster this way than row by row)."""
    off = np.arange(len(r), dtype=np.int64)[:, None] * n
    flat = (r + off).ravel()
    flat.sort()
    return flat.reshape(r.shape) - off


def _sorted_draws(rng, m: int, k: int, n: int) -> np.ndarray:
    """m rows of k sorted iid uniform draws from [0, n) without sorting: the order
    statistics of k uniforms are the normalised partial sums of k + 1 exponentials, and
    flooring keeps their order."""
    S = np.cumsum(rng.standard_exponential((m, k + 1)), axis=1)
    return np.minimum(np.floor(S[:, :k] / S[:, k:] * n), n - 1).astype(np.int64)


@functools.lru_cache(maxsize=512)
def null_aps(k: int, n: int, size: int, seed: int) -> np.ndarray:
    """``size`` APs (float32) of k positives at uniformly random distinct ranks among n
    candidates: copairs' ``random_ap`` null, drawn in O(k) per draw; seeded by (seed, k, n)
    so a configuration's null does not depend on the others. Cached (read-only): sources,
    blocks and models of one evaluation share their configurations."""
    rng = np.random.default_rng([seed, k, n])
    if n <= 4 * k:  # dense: the k smallest of n random keys
        r = _sort_rows(np.argpartition(rng.random((size, n)), k - 1, axis=1)[:, :k], n)
    else:  # sparse: k sorted uniform draws, the rows with a repeat drawn again
        r = _sorted_draws(rng, size, k, n)
        bad = np.flatnonzero((np.diff(r, axis=1) == 0).any(axis=1))
        while len(bad):
            r[bad] = _sorted_draws(rng, len(bad), k, n)
            bad = bad[(np.diff(r[bad], axis=1) == 0).any(axis=1)]
    out = (np.arange(1, k + 1) / (r + 1.0)).mean(axis=1).astype(np.float32)
    out.flags.writeable = False
    return out


def null_dists(confs: np.ndarray, size: int, seed: int) -> np.ndarray:
    """confs (c, 2) rows (n_pos_pairs, n_total_pairs) -> (c, size) float32 null APs (the
    signature of copairs' ``compute.get_null_dists``)."""
    return np.stack([null_aps(int(k), int(n), size, seed) for k, n in confs])


def map_pvalues(ap: pd.DataFrame, size: int = NULL_SIZE, seed: int = 0, nulls=null_dists):
    """Per perturbation: mAP and p-value, as copairs' ``get_map_pvalue``.

    ap: rows of ``activity_ap`` / ``consistency_ap`` -> DataFrame perturbation,
    mean_average_precision, p_value (sorted by perturbation). ``nulls(confs, size, seed)``
    gives the null rows of the sorted unique configurations (copairs' own
    ``get_null_dists`` gives copairs' p-values exactly).
    """
    ap = ap[ap["average_precision"].notna() & (ap["n_pos_pairs"] > 0)].reset_index(drop=True)
    if len(ap) == 0:
        return pd.DataFrame({"perturbation": [], "mean_average_precision": [], "p_value": []})
    confs, conf = np.unique(
        ap[["n_pos_pairs", "n_total_pairs"]].to_numpy(), axis=0, return_inverse=True
    )
    null = nulls(confs, size, seed)
    conf = conf.ravel()
    codes, perts = pd.factorize(ap["perturbation"], sort=True)
    n = np.bincount(codes, minlength=len(perts))
    mean = np.bincount(codes, weights=ap["average_precision"], minlength=len(perts)) / n
    # a group's null is fixed by its members' configurations, in row order: one per sequence
    order = np.argsort(codes, kind="stable")
    seq = np.full((len(perts), n.max(initial=1)), -1)
    seq[codes[order], np.arange(len(order)) - np.repeat(np.cumsum(n) - n, n)] = conf[order]
    useq, which = np.unique(seq, axis=0, return_inverse=True)
    p = np.empty(len(perts))
    for u, s in enumerate(useq):
        g = np.flatnonzero(which.ravel() == u)
        dist = np.sort(null[s[s >= 0]].mean(axis=0))
        p[g] = (size - np.searchsorted(dist, mean[g], side="right") + 1) / (size + 1)
    return pd.DataFrame({"perturbation": perts, "mean_average_precision": mean, "p_value": p})


def bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg corrected p-values, as statsmodels' ``multipletests(fdr_bh)``."""
    p = np.asarray(p, dtype=np.float64)
    order = np.argsort(p)
    raw = p[order] / (np.arange(1, len(p) + 1) / len(p))
    out = np.empty_like(p)
    out[order] = np.minimum(np.minimum.accumulate(raw[::-1])[::-1], 1.0)
    return out


def summary(ap: pd.DataFrame, size: int = NULL_SIZE, seed: int = 0) -> dict:
    """{mean_map, fraction_significant, n}: mean of the perturbations' mAPs and the share
    with BH-corrected p < ``THRESHOLD`` (NaN for none)."""
    m = map_pvalues(ap, size=size, seed=seed)
    if len(m) == 0:
        return {"mean_map": float("nan"), "fraction_significant": float("nan"), "n": 0}
    return {
        "mean_map": float(m["mean_average_precision"].mean()),
        "fraction_significant": float(np.mean(bh(m["p_value"].to_numpy()) < THRESHOLD)),
        "n": len(m),
    }


def map_scores(wells, X, names, M, relationships, size=NULL_SIZE, seed=0, pairs=None, null=None):
    """``map_benchmarks``' "map" entry: {"activity": {mean_map, fraction_significant,
    perturbations}, "consistency": {source: {mean_map, fraction_significant, queries}}}.
    wells/X the (TVN-corrected) wells, names/M their aggregated map; ``null``: a recall
    ``NullScan`` for the consistency pass to fill (``consistency_ap``)."""
    a = summary(activity_ap(wells, X), size=size, seed=seed)
    activity = {**{k: a[k] for k in ("mean_map", "fraction_significant")}, "perturbations": a["n"]}
    consistency = {}
    for src, ap in consistency_ap(names, M, relationships, pairs=pairs, null=null).items():
        if len(ap) == 0:  # no pair of the source in the map: left out, as in recall
            continue
        c = summary(ap, size=size, seed=seed)
        consistency[src] = {
            **{k: c[k] for k in ("mean_map", "fraction_significant")},
            "queries": c["n"],
        }
    return {"activity": activity, "consistency": consistency}


def metric_rows(m: dict) -> list[tuple[str, float]]:
    """(metric, value) rows of a ``map_scores`` result, as ``scaling evaluate`` tabulates
    them: ``map_activity``, ``map_activity_fraction_significant``,
    ``map_consistency_{source}``, ``map_consistency_{source}_fraction_significant``."""
    a = m["activity"]
    rows = [("map_activity", a["mean_map"])]
    rows.append(("map_activity_fraction_significant", a["fraction_significant"]))
    for src, c in m["consistency"].items():
        rows.append((f"map_consistency_{src}", c["mean_map"]))
        rows.append((f"map_consistency_{src}_fraction_significant", c["fraction_significant"]))
    return rows
