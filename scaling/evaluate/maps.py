"""Perturbation maps and their benchmarks (ARCHITECTURE section 4): TVN (batch =
experiment), then known-relationship recall on the aggregated map (``recall``) and
replicate consistency on the wells (``consistency``), and compound-gene activity where the
truth has compounds (``compounds``); ``scaling benchmark`` runs it on any well-embeddings
file and writes the contract's JSON.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from scaling.errors import InputError
from scaling.evaluate.compounds import compound_gene_activity, gene_wells
from scaling.evaluate.consistency import replicate_consistency
from scaling.evaluate.meanap import map_scores
from scaling.evaluate.recall import (
    CHANCE,
    aggregate,
    null_scan,
    recall_details,
    relationship_pairs,
    unit_rows,
)
from scaling.evaluate.tvn import tvn as typical_variation_normalisation


def map_benchmarks(
    wells: pd.DataFrame,
    X: np.ndarray,
    perturbations: pd.DataFrame,
    relationships: pd.DataFrame,
    tvn: bool = True,
    seed: int = 0,
    compounds: pd.DataFrame | None = None,
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

    With a compound table (``compounds``, truth/compounds.parquet), "compound_gene" is
    ``compounds.compound_gene_activity`` on all wells, and every other benchmark runs on
    the gene part alone (``compounds.gene_wells``), as if the screen had no compounds.
    """
    for name, df, cols in (
        ("relationships", relationships, ("source", "gene_a", "gene_b")),
        ("perturbations", perturbations, ("perturbation",)),
    ):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ValueError(f"{name}: missing column(s) {', '.join(missing)}")
    compound_gene = None
    if compounds is not None:
        compound_gene = compound_gene_activity(wells, X, compounds, tvn=tvn, seed=seed)
        keep = gene_wells(wells, compounds)
        wells, X = wells[keep].reset_index(drop=True), np.asarray(X)[keep]
    if tvn:
        X = typical_variation_normalisation(
            X, wells["is_control"].to_numpy(dtype=bool), wells["experiment"].to_numpy()
        )
    names, M = aggregate(wells, X)
    pairs = relationship_pairs(names, relationships)  # shared by recall and mAP
    # mAP's pass over the Gram rows also scans recall's null (no pass of recall's own)
    null = null_scan(unit_rows(M), seed=seed)
    maps = map_scores(wells, X, names, M, relationships, seed=seed, pairs=pairs, null=null)
    r = recall_details(names, M, relationships, pairs=pairs, seed=seed, first=null)
    result = {
        "recall": r["recall"],
        "consistency": replicate_consistency(wells, X, seed=seed),
        "n_perturbations": len(names),
        "chance": CHANCE,
        "pairs": r["pairs"],
        "null_percentiles": r["null_percentiles"],
        "known_perturbations": int(names.isin(perturbations["perturbation"].astype(str)).sum()),
        "tvn": bool(tvn),
        # mAP (copairs): phenotypic activity on the wells, consistency per source on the map
        "map": maps,
    }
    if compound_gene is not None:
        result["compound_gene"] = compound_gene
    return result


def benchmark(
    embeddings,
    truth,
    out,
    tvn: bool = True,
    seed: int = 0,
    sources=(),
    relationships=(),
    min_score: int = 700,
    string_info=None,
) -> dict:
    """``scaling benchmark``: ``map_benchmarks`` of a well-embeddings file against a truth
    folder and/or real annotation sources (``sources``: names of scaling.annotations.SOURCES;
    ``relationships``: a user's files in any format ``read_relationships`` reads), written to
    ``out`` as JSON (atomically; NaN as null) with the files used under "relationship_files".
    Without a truth folder the perturbations are the map's own non-control names. Bad input
    raises InputError naming the file at fault."""
    from scaling import annotations
    from scaling.evaluate.table import read_compounds, read_embeddings, read_truth, write_json

    if Path(out).is_dir():
        raise InputError(f"--out: {out} is a folder, expected a JSON file path")
    if truth is None and not sources and not relationships:
        raise InputError("benchmark: give --truth, --sources or --relationships")
    wells, X = read_embeddings(embeddings)
    files = [str(annotations.source_path(s)) for s in sources]
    tables = [annotations.load_sources(sources)] if sources else []
    for f in relationships:
        tables.append(annotations.read_relationships(f, min_score, string_info))
        files.append(str(f))
    compounds = None
    if truth is not None:
        perturbations, rel = read_truth(truth)
        compounds = read_compounds(truth)
        tables.insert(0, rel)
        files.insert(0, str(Path(truth) / "relationships.parquet"))
    else:
        names = wells.loc[~wells["is_control"].astype(bool), "perturbation"].astype(str)
        perturbations = pd.DataFrame({"perturbation": sorted(set(names))})
    relationships = pd.concat(tables, ignore_index=True)[["source", "gene_a", "gene_b"]]
    try:
        result = map_benchmarks(
            wells, X, perturbations, relationships, tvn=tvn, seed=seed, compounds=compounds
        )
    except ValueError as e:
        raise InputError(f"{embeddings}: {e}") from None
    result["relationship_files"] = files
    write_json(out, result)
    return result
