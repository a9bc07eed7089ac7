"""Replicate consistency (ARCHITECTURE section 4): KS and Cramer-von Mises statistics of
replicate cosines (wells of one perturbation in different experiments) against as many
non-replicate cosines, and the share of perturbations whose mean replicate cosine beats a
null of control-well sets (``perturbation_pvalues``, also what phenoprints curation uses).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from scaling.evaluate.recall import pair_cosines, unit_rows

ALPHA = 0.01  # consistency significance level
N_NULL = 1000  # control sets drawn per set composition


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
    cos = pair_cosines(U, u, v).astype(np.float64) if cos is None else cos
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
    matched = pair_cosines(U, u, v).astype(np.float64)
    null = pair_cosines(U, nu, nv).astype(np.float64)
    if len(matched) and len(null):
        ks = float(stats.ks_2samp(matched, null).statistic)
        cvm = float(stats.cramervonmises_2samp(matched, null).statistic)
    else:
        ks = cvm = float("nan")
    p = _pvalues(wells, U, seed, n_null, pairs, matched)[0]["p_value"].to_numpy()
    p = p[np.isfinite(p)]
    frac = float(np.mean(p < ALPHA)) if len(p) else float("nan")
    return {"ks": ks, "cvm": cvm, "fraction_significant": frac}
