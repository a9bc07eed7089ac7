"""Perturbation maps and their benchmarks (ARCHITECTURE section 4): TVN (batch =
experiment), then known-relationship recall on the aggregated map (``recall``) and
replicate consistency on the wells (``consistency``); ``scaling benchmark`` runs it on any
well-embeddings file and writes the contract's JSON.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from scaling.errors import InputError
from scaling.evaluate.consistency import replicate_consistency
from scaling.evaluate.meanap import map_scores
from scaling.evaluate.recall import CHANCE, aggregate, recall_details
from scaling.evaluate.tvn import tvn as typical_variation_normalisation


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
    perturbations listed in ``perturbations``), "tvn" and "map" (mean average precision,
    ``scaling.evaluate.meanap.map_scores``: {"activity": {"mean_map",
    "fraction_significant", "perturbations"}, "consistency": {source: {"mean_map",
    "fraction_significant", "queries"}}}). Raises ValueError on data the
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
        # mAP (copairs): phenotypic activity on the wells, consistency per source on the map
        "map": map_scores(wells, X, names, M, relationships, seed=seed),
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
