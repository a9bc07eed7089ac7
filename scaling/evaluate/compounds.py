"""Compound-gene activity (ARCHITECTURE section 4, after EFAAR's compound-gene benchmark
and ViTally's Table 3), and the split of a screen into its gene and compound parts.

Input: well embeddings (wells, X) of a screen with compound treatments, and the compound
table (``truth/compounds.parquet``: one row per treatment, columns ``perturbation`` (the
treatment's name in the wells), ``compound``, ``concentration``, ``targets`` (gene names
joined by ``;``)).

1. TVN (batch = experiment) fitted on all control wells, applied to all wells.
2. Aggregate (``recall.aggregate``): one embedding per treatment (compound, concentration)
   and per gene (every other non-control perturbation).
3. Score each (compound m, gene g) by ``s(m, g) = max_k |cos(t_mk, g)|`` over m's
   treatments t_mk present in the map (a zero vector has cosine 0).
4. Per compound with at least one annotated target among the map's genes: positives = those
   targets; negatives = ``max(2 x positives, 20)`` genes drawn without replacement from the
   map's genes that are not its targets (all of them if there are fewer), with one seeded
   stream (seed, 11) over the compounds in sorted order.
5. AP per compound, the mean over compounds = ``ap``.
6. Random: the same candidate sets, every score replaced by an independent U(0, 1) draw
   (stream (seed, 12)); repeated ``repeats`` times (default 100); ``random_mean`` and
   ``random_sd`` (ddof 1) of the repeats' mean AP; ``z = (ap - random_mean) / random_sd``.

Average precision (as ``sklearn.metrics.average_precision_score``): candidates sorted by
decreasing score; at each distinct score t, precision(t) = positives / candidates with
score >= t and recall(t) = positives with score >= t / all positives; AP = sum over the
distinct t, in decreasing order, of (recall(t) - recall(previous t)) x precision(t). Tied
candidates enter together, so their order does not matter (a tie of a positive and a
negative counts both before the positive's precision is read). Without ties this is the
mean over the positives of the precision at each positive's rank. A random ranking of n
candidates with P positives has ``E[AP] = (P-1)/(n-1) + (n-P)/(n-1) x H_n / n``
(``expected_random_ap``; H_n the n-th harmonic number).

The gene benchmarks never see compound wells: ``gene_wells`` marks the screen's gene part
(every well but the treatments and the controls of plates that hold only treatments), and
``maps.map_benchmarks`` computes TVN, recall and consistency on it exactly as on a screen
without compounds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from scaling.evaluate.recall import aggregate, unit_rows
from scaling.evaluate.tvn import tvn as typical_variation_normalisation

MIN_NEGATIVES = 20
REPEATS = 100


def average_precision(scores, labels) -> np.ndarray | float:
    """AP of ``scores`` (n,) or (R, n) against ``labels`` (n,) bool (module doc, ties
    grouped). Returns a float, or (R,) for (R, n) scores; NaN without positives."""
    S = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    y = np.asarray(labels, dtype=bool)
    if S.shape[1] != len(y):
        raise ValueError(f"average_precision: {S.shape[1]} scores, {len(y)} labels")
    P = int(y.sum())
    if P == 0:
        ap = np.full(len(S), np.nan)
        return ap if np.ndim(scores) == 2 else float(ap[0])
    order = np.argsort(-S, axis=1, kind="stable")
    s = np.take_along_axis(S, order, axis=1)
    tp = np.cumsum(y[order], axis=1)
    end = np.ones(s.shape, bool)  # the last candidate of each run of equal scores
    end[:, :-1] = s[:, 1:] != s[:, :-1]
    at_end = np.where(end, tp, 0)
    prev = np.zeros_like(tp)
    prev[:, 1:] = np.maximum.accumulate(at_end, axis=1)[:, :-1]  # tp at the previous end
    precision = tp / np.arange(1, S.shape[1] + 1)
    ap = np.sum(np.where(end, (tp - prev) * precision, 0.0), axis=1) / P
    return ap if np.ndim(scores) == 2 else float(ap[0])


def expected_random_ap(n: int, p: int) -> float:
    """E[AP] of a uniformly random ranking of n candidates with p positives (module doc)."""
    if n == 1:
        return 1.0
    h = np.sum(1.0 / np.arange(1, n + 1))
    return (p - 1) / (n - 1) + (n - p) / (n - 1) * h / n


def gene_wells(wells: pd.DataFrame, compounds: pd.DataFrame) -> np.ndarray:
    """(n,) bool: the wells of the gene screen, i.e. not a compound treatment and not a
    control on a plate (experiment, plate) without any gene well."""
    treat = wells["perturbation"].astype(str).isin(compounds["perturbation"].astype(str))
    treat = treat.to_numpy()
    ctrl = wells["is_control"].to_numpy(dtype=bool)
    plate = wells["experiment"].astype(str) + "\t" + wells["plate"].astype(str)
    has_gene = pd.Series(~ctrl & ~treat).groupby(plate.to_numpy()).any()
    gene_plate = plate.map(has_gene).to_numpy(dtype=bool)
    return ~treat & (~ctrl | gene_plate)


def candidates(compounds: pd.DataFrame, genes: pd.Index, seed: int = 0) -> list[dict]:
    """Per compound (sorted) with a target among ``genes``: {"compound", "treatments" (its
    perturbation names), "genes" (int index into ``genes``: positives first), "labels"
    (bool, True for positives)}; negatives drawn as in the module doc (step 4)."""
    rng = np.random.default_rng([seed, 11])
    out = []
    for name, rows in compounds.groupby(compounds["compound"].astype(str), sort=True):
        targets = {t for s in rows["targets"].astype(str) for t in s.split(";") if t}
        is_target = genes.isin(targets)
        pos, others = np.flatnonzero(is_target), np.flatnonzero(~is_target)
        if len(pos) == 0:
            continue
        n_neg = min(max(2 * len(pos), MIN_NEGATIVES), len(others))
        neg = rng.choice(others, size=n_neg, replace=False)
        out.append(
            dict(
                compound=name,
                treatments=list(rows["perturbation"].astype(str)),
                genes=np.concatenate([pos, neg]),
                labels=np.arange(len(pos) + n_neg) < len(pos),
            )
        )
    return out


def compound_gene_activity(
    wells: pd.DataFrame,
    X: np.ndarray,
    compounds: pd.DataFrame,
    tvn: bool = True,
    seed: int = 0,
    repeats: int = REPEATS,
) -> dict:
    """Compound-gene activity (module doc): {"ap", "random_mean", "random_sd", "z",
    "n_compounds", "repeats", "per_compound" {compound: AP}}. NaN where undefined (no
    compound with a target in the map; fewer than 2 repeats for the sd)."""
    if tvn:
        X = typical_variation_normalisation(
            X, wells["is_control"].to_numpy(dtype=bool), wells["experiment"].to_numpy()
        )
    names, M = aggregate(wells, X)
    U = unit_rows(M, np.float64)
    is_treat = names.isin(compounds["perturbation"].astype(str))
    genes, G = names[~is_treat], U[~is_treat]
    row = pd.Series(np.arange(len(names)), index=names)
    per_compound, random = {}, []
    rng = np.random.default_rng([seed, 12])
    for c in candidates(compounds, genes, seed):
        t = row.reindex(c["treatments"]).dropna().astype(int).to_numpy()
        if len(t) == 0:
            continue
        score = np.abs(U[t] @ G[c["genes"]].T).max(axis=0)
        per_compound[c["compound"]] = average_precision(score, c["labels"])
        random.append(average_precision(rng.random((repeats, len(score))), c["labels"]))
    n = len(per_compound)
    ap = float(np.mean(list(per_compound.values()))) if n else float("nan")
    rand = np.mean(random, axis=0) if n else np.full(repeats, np.nan)
    mean = float(np.mean(rand))
    sd = float(np.std(rand, ddof=1)) if repeats > 1 else float("nan")
    z = (ap - mean) / sd if sd > 0 else float("nan")
    return {
        "ap": ap,
        "random_mean": mean,
        "random_sd": sd,
        "z": z,
        "n_compounds": n,
        "repeats": repeats,
        "per_compound": per_compound,
    }
