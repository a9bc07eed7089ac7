"""Perturbation maps and their benchmarks (ARCHITECTURE section 4).

- ``aggregate``: a perturbation's embedding is the mean of its wells (controls excluded).
- ``relationship_recall``: known-relationship recall per source against the null of all
  unordered pairs of distinct perturbations.
- ``replicate_consistency``: KS and Cramer-von Mises statistics of replicate cosines
  against non-replicate cosines, and the share of perturbations beating a control null
  (``perturbation_pvalues``).
- ``map_benchmarks``: all of it after TVN (batch = experiment), the contract's JSON.

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
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from scaling.errors import InputError
from scaling.evaluate.tvn import tvn as typical_variation_normalisation

LOW, HIGH = 5.0, 95.0  # the recall tails (percentiles of the null)
CHANCE = (LOW + 100.0 - HIGH) / 100.0  # a random map's recall
ALPHA = 0.01  # consistency significance level
N_NULL = 1000  # control sets drawn per set composition
TILE = 2048  # Gram tile side: 16 MB of float32
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


def _tiles(U: np.ndarray, tile: int):
    """Upper-triangular tiles of ``U @ U.T`` as 1-D float32 arrays, each pair (i < j) once.

    The tile buffer is reused: a yielded array is valid until the next one is requested.
    """
    P = len(U)
    buf = np.empty(tile * tile, dtype=np.float32)
    upper = np.triu(np.ones((tile, tile), dtype=bool), 1)
    for i in range(0, P, tile):
        a = U[i : i + tile]
        for j in range(i, P, tile):
            b = U[j : j + tile]
            G = buf[: len(a) * len(b)].reshape(len(a), len(b))
            np.dot(a, b.T, out=G)
            yield G[upper[: len(a), : len(b)]] if i == j else G.reshape(-1)


def _scan(U: np.ndarray, brackets: list[tuple[float, float]], tile: int):
    """One pass over the null: per bracket [a, b], the count of values below a and the
    values inside (a narrow band: cheap to extract, unlike a whole 5% tail)."""
    below = [0] * len(brackets)
    kept: list[list[np.ndarray]] = [[] for _ in brackets]
    m1, m2 = np.empty(tile * tile, dtype=bool), np.empty(tile * tile, dtype=bool)
    for t in _tiles(U, tile):
        x1, x2 = m1[: len(t)], m2[: len(t)]
        for k, (a, b) in enumerate(brackets):
            below[k] += int(np.count_nonzero(np.less(t, a, out=x1)))
            # a <= b, so t < a implies t <= b: the band a <= t <= b is (t <= b) xor (t < a)
            np.logical_xor(x1, np.less_equal(t, b, out=x2), out=x1)
            kept[k].append(t[np.flatnonzero(x1)])
    return below, [np.concatenate(v) if v else np.empty(0, np.float32) for v in kept]


def null_percentiles(
    U: np.ndarray,
    q=(LOW, HIGH),
    *,
    tile: int = TILE,
    sample: int = SAMPLE,
    z: float = Z,
    direct: int = DIRECT,
    seed: int = 0,
) -> np.ndarray:
    """Percentiles ``q`` of the cosines of all unordered pairs of distinct rows of ``U``.

    U (P, D) float32 unit rows. numpy's percentile (module doc) of the float32 null: up
    to ``direct`` pairs by ``np.percentile`` itself; beyond, the same two order statistics
    found by bracketing and selection and interpolated the same way (in float64), without
    materialising the null.
    """
    U = np.ascontiguousarray(U, dtype=np.float32)
    P = len(U)
    n = P * (P - 1) // 2
    if n == 0:
        raise ValueError(f"the recall null needs at least 2 perturbations, got {P}")
    if not np.isfinite(U).all():
        raise ValueError("the map has non-finite values")
    q = np.atleast_1d(np.asarray(q, dtype=np.float64))
    if n <= direct:
        return np.percentile(np.concatenate([t.copy() for t in _tiles(U, tile)]), q)
    h = (n - 1) * (q / 100.0)
    k = np.floor(h).astype(np.int64)
    need = [(int(ki), int(min(ki + 1, n - 1))) for ki in k]  # ranks each percentile reads
    rng = np.random.default_rng([seed, 7])
    i = rng.integers(0, P, sample)
    j = rng.integers(0, P - 1, sample)
    j += j >= i  # uniform over ordered pairs of distinct rows
    s = np.sort(np.einsum("ij,ij->i", U[i], U[j]))
    found: dict[int, float] = {}
    todo = list(range(len(q)))
    while todo:
        brackets = []
        for m in todo:
            p = q[m] / 100.0
            half = z * math.sqrt(max(p * (1 - p), 1.0 / sample) / sample)
            lo, hi = math.floor((p - half) * sample), math.ceil((p + half) * sample)
            a = float(s[lo]) if lo >= 0 else -np.inf
            b = float(s[hi]) if hi < sample else np.inf
            brackets.append((a, b))
        below, values = _scan(U, brackets, tile)
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


def recall_details(names, M: np.ndarray, relationships: pd.DataFrame, **null_kwargs) -> dict:
    """``relationship_recall`` with its working: thresholds and pair counts per source."""
    U = unit_rows(M)
    lo, hi = null_percentiles(U, (LOW, HIGH), **null_kwargs)
    recall, pairs = {}, {}
    for src, ij in relationship_pairs(names, relationships).items():
        pairs[src] = len(ij)
        if len(ij):
            cos = np.einsum("ij,ij->i", U[ij[:, 0]], U[ij[:, 1]])
            recall[src] = float(np.mean((cos <= lo) | (cos >= hi)))
    return {"recall": recall, "pairs": pairs, "null_percentiles": [float(lo), float(hi)]}


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


# ---------------------------------------------------------------- replicate consistency


def _composition(codes: np.ndarray, exp: np.ndarray, n_exp: int) -> np.ndarray:
    """Wells per (perturbation code, experiment): int64 (n_codes, n_exp)."""
    n = int(codes.max()) + 1 if len(codes) else 0
    return np.bincount(codes * n_exp + exp, minlength=n * n_exp).reshape(n, n_exp)


def _wells_index(wells: pd.DataFrame):
    """Codes of the non-control wells: (rows, perturbation codes, names, experiment codes)."""
    ctrl = wells["is_control"].to_numpy(dtype=bool)
    rows = np.flatnonzero(~ctrl)
    codes, names = pd.factorize(wells["perturbation"].to_numpy()[rows], sort=True)
    exp, _ = pd.factorize(wells["experiment"].to_numpy(), sort=True)
    return rows, codes, pd.Index(names, name="perturbation"), exp


def replicate_pairs(wells: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of wells (row numbers u < v in ``wells``) of the same non-control
    perturbation from different experiments, and each pair's perturbation code (sorted
    names, as ``aggregate``)."""
    rows, codes, _, exp = _wells_index(wells)
    order = rows[np.argsort(codes, kind="stable")]
    sizes = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    us, vs, gs = [], [], []
    for size in np.unique(sizes[sizes >= 2]):
        g = np.flatnonzero(sizes == size)
        members = order[starts[g][:, None] + np.arange(size)]  # (groups, size)
        a, b = np.triu_indices(size, 1)
        u, v = members[:, a].ravel(), members[:, b].ravel()
        cross = exp[u] != exp[v]
        us.append(u[cross])
        vs.append(v[cross])
        gs.append(np.repeat(g, len(a))[cross])
    if not us:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(us), np.concatenate(vs), np.concatenate(gs)


def _pair_cosines(U: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Cosines of row pairs (u_k, v_k) of unit rows, float64 (sums taken in U's dtype)."""
    return np.einsum("ij,ij->i", U[u], U[v]).astype(np.float64)


def null_pairs(wells: pd.DataFrame, n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs of wells of different non-control perturbations from different
    experiments, uniform over such pairs (rejection sampling); none if no such pair exists."""
    rows, codes, _, exp = _wells_index(wells)
    e = exp[rows]
    comp = _composition(codes, e, int(exp.max()) + 1)
    cross = (len(rows) ** 2 - (comp.sum(axis=0) ** 2).sum()) // 2  # pairs across experiments
    same = ((comp.sum(axis=1) ** 2 - (comp**2).sum(axis=1)) // 2).sum()  # ... of one perturbation
    if n <= 0 or cross - same <= 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    us, vs, have = [], [], 0
    while have < n:
        m = int(1.5 * (n - have)) + 16
        a, b = rng.integers(0, len(rows), m), rng.integers(0, len(rows), m)
        ok = (codes[a] != codes[b]) & (e[a] != e[b])
        us.append(rows[a[ok]])
        vs.append(rows[b[ok]])
        have += int(ok.sum())
    return np.concatenate(us)[:n], np.concatenate(vs)[:n]


def set_scores(U: np.ndarray, members: np.ndarray, exp_of_member: np.ndarray) -> np.ndarray:
    """Mean cosine over the cross-experiment pairs of each set of wells.

    U (n, D) unit rows, members (S, m) row numbers of S sets of m wells, exp_of_member (m,)
    the experiment of each set position -> (S,). Uses sum_{i<j, e_i != e_j} u_i.u_j =
    (|sum_i u_i|^2 - sum_e |sum_{i in e} u_i|^2) / 2, so no pair is formed.
    """
    V = U[members].astype(np.float64)  # (S, m, D)
    total = np.einsum("sd,sd->s", V.sum(axis=1), V.sum(axis=1))
    same = np.zeros(len(members))
    counts = []
    for e in np.unique(exp_of_member):
        Ve = V[:, exp_of_member == e].sum(axis=1)
        same += np.einsum("sd,sd->s", Ve, Ve)
        counts.append(int((exp_of_member == e).sum()))
    m = len(exp_of_member)
    n_pairs = (m * m - sum(c * c for c in counts)) // 2
    return (total - same) / 2 / n_pairs


def _draw_distinct(rng, pool: int, size: int, draws: int) -> np.ndarray:
    """``draws`` rows of ``size`` distinct integers in [0, pool) (uniform subsets)."""
    out = rng.integers(0, pool, (draws, size))
    while size > 1:
        s = np.sort(out, axis=1)
        dup = (s[:, 1:] == s[:, :-1]).any(axis=1)
        if not dup.any():
            break
        out[dup] = rng.integers(0, pool, (int(dup.sum()), size))
    return out


def _pvalues(wells: pd.DataFrame, U: np.ndarray, seed: int, n_null: int, pairs=None, cos=None):
    """perturbation_pvalues' table and its nulls: [(perturbation codes, members (S, m))].
    ``pairs`` = ``replicate_pairs(wells)`` and ``cos`` their cosines, when at hand."""
    rows, codes, names, exp = _wells_index(wells)
    u, v, g = replicate_pairs(wells) if pairs is None else pairs
    n_pairs = np.bincount(g, minlength=len(names))
    cos = _pair_cosines(U, u, v) if cos is None else cos
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.bincount(g, weights=cos, minlength=len(names)) / n_pairs
    score[n_pairs == 0] = np.nan
    n_exp = int(exp.max()) + 1
    comp = _composition(codes, exp[rows], n_exp)
    ctrl_rows = np.flatnonzero(wells["is_control"].to_numpy(dtype=bool))
    ctrl_by_exp = [ctrl_rows[exp[ctrl_rows] == e] for e in range(n_exp)]
    p = np.full(len(names), np.nan)
    nulls = []
    rng = np.random.default_rng([seed, 2])
    kinds, inverse = np.unique(comp, axis=0, return_inverse=True)
    for c, kind in enumerate(kinds):
        if (kind > 0).sum() < 2 or any(len(ctrl_by_exp[e]) < kind[e] for e in range(n_exp)):
            continue  # no cross-experiment pair, or too few controls to mirror the set
        parts, member_exp = [], []
        for e in np.flatnonzero(kind):
            pool = ctrl_by_exp[e]
            parts.append(pool[_draw_distinct(rng, len(pool), int(kind[e]), n_null)])
            member_exp += [e] * int(kind[e])
        members = np.concatenate(parts, axis=1)
        null = np.sort(set_scores(U, members, np.array(member_exp)))
        these = np.flatnonzero(inverse.ravel() == c)
        at_least = n_null - np.searchsorted(null, score[these], side="left")
        p[these] = (at_least + 1) / (n_null + 1)
        nulls.append((these, members))
    table = pd.DataFrame(
        {
            "perturbation": names,
            "score": score,
            "p_value": p,
            "n_wells": comp.sum(axis=1),
            "n_experiments": (comp > 0).sum(axis=1),
        }
    )
    return table, nulls


def perturbation_pvalues(
    wells: pd.DataFrame, X: np.ndarray, seed: int = 0, n_null: int = N_NULL
) -> pd.DataFrame:
    """Replicate consistency of each perturbation against a control null (ARCHITECTURE
    section 4), on the embeddings as given (apply ``tvn`` first where wanted).

    score s = mean cosine over the pairs of the perturbation's wells from different
    experiments. Null: ``n_null`` random sets of control wells with the same number of
    wells in each of the same experiments (drawn without replacement, seeded), scored the
    same way. p = (#{null >= s} + 1) / (n_null + 1). Returns one row per non-control
    perturbation (sorted): perturbation, score, p_value, n_wells, n_experiments; score and
    p_value are NaN for a perturbation seen in one experiment, and p_value also where an
    experiment has fewer controls than the perturbation has wells there.
    """
    return _pvalues(wells, unit_rows(X), seed, n_null)[0]


def replicate_consistency(
    wells: pd.DataFrame, X: np.ndarray, seed: int = 0, n_null: int = N_NULL
) -> dict[str, float]:
    """Replicate consistency (ARCHITECTURE section 4): {"ks", "cvm", "fraction_significant"}.

    matched = cosines of every pair of wells of one non-control perturbation from different
    experiments; null = as many pairs of wells of different non-control perturbations from
    different experiments (seeded). ks = ``scipy.stats.ks_2samp`` statistic, cvm =
    ``scipy.stats.cramervonmises_2samp`` statistic T; fraction_significant = share of the
    perturbations with a score (seen in 2+ experiments) whose p < 0.01
    (``perturbation_pvalues``). NaN where undefined (no replicate pair).
    """
    U = unit_rows(X)
    pairs = replicate_pairs(wells)
    u, v, _ = pairs
    nu, nv = null_pairs(wells, len(u), np.random.default_rng([seed, 1]))
    matched, null = _pair_cosines(U, u, v), _pair_cosines(U, nu, nv)
    if len(matched) and len(null):
        ks = float(stats.ks_2samp(matched, null).statistic)
        cvm = float(stats.cramervonmises_2samp(matched, null).statistic)
    else:
        ks = cvm = float("nan")
    p = _pvalues(wells, U, seed, n_null, pairs, matched)[0]["p_value"].to_numpy()
    p = p[np.isfinite(p)]
    frac = float(np.mean(p < ALPHA)) if len(p) else float("nan")
    return {"ks": ks, "cvm": cvm, "fraction_significant": frac}


# ---------------------------------------------------------------- all of it


def map_benchmarks(
    wells: pd.DataFrame,
    X: np.ndarray,
    perturbations: pd.DataFrame,
    relationships: pd.DataFrame,
    tvn: bool = True,
    seed: int = 0,
) -> dict:
    """The map benchmarks of one set of well embeddings (contract JSON, ARCHITECTURE
    sections 4 and 6): TVN (batch = experiment) unless ``tvn=False``, then recall per
    source on the aggregated map and replicate consistency on the wells.

    Returns {"recall": {source: float}, "consistency": {"ks", "cvm",
    "fraction_significant"}, "n_perturbations": int} plus "chance" (0.10), "pairs" (query
    pairs per source), "null_percentiles" ([5th, 95th]), "known_perturbations" (map
    perturbations listed in ``perturbations``) and "tvn". Raises ValueError on data the
    benchmarks cannot use (no controls for TVN, fewer than 2 perturbations).
    """
    for name, df, cols in (
        ("relationships", relationships, ("source", "gene_a", "gene_b")),
        ("perturbations", perturbations, ("perturbation",)),
    ):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ValueError(f"{name}: missing column(s) {', '.join(missing)}")
    if tvn:
        X = typical_variation_normalisation(
            X, wells["is_control"].to_numpy(dtype=bool), wells["experiment"].to_numpy()
        )
    names, M = aggregate(wells, X)
    r = recall_details(names, M, relationships, seed=seed)
    return {
        "recall": r["recall"],
        "consistency": replicate_consistency(wells, X, seed=seed),
        "n_perturbations": len(names),
        "chance": CHANCE,
        "pairs": r["pairs"],
        "null_percentiles": r["null_percentiles"],
        "known_perturbations": int(names.isin(perturbations["perturbation"].astype(str)).sum()),
        "tvn": bool(tvn),
    }


def benchmark(embeddings, truth, out, tvn: bool = True, seed: int = 0) -> dict:
    """``scaling benchmark``: ``map_benchmarks`` of a well-embeddings file against a truth
    folder, written to ``out`` as JSON (atomically; NaN as null). Bad input raises
    InputError naming the file at fault."""
    from scaling.evaluate.table import read_embeddings, read_truth, write_json

    if Path(out).is_dir():
        raise InputError(f"--out: {out} is a folder, expected a JSON file path")
    wells, X = read_embeddings(embeddings)
    perturbations, relationships = read_truth(truth)
    try:
        result = map_benchmarks(wells, X, perturbations, relationships, tvn=tvn, seed=seed)
    except ValueError as e:
        raise InputError(f"{embeddings}: {e}") from None
    write_json(out, result)
    return result
