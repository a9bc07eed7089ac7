"""``scaling curate``: selections of wells, written as a manifest (no pixels are copied).

Output: ``OUT/curation.json`` (strategy, parameters, source, counts), ``OUT/wells.parquet``
(experiment, plate, well, perturbation, is_control) and a copy of the source's truth
tables, so a curation folder is used wherever a dataset folder is.

Strategies register in ``STRATEGIES``: a function (wells table, rng, dataset, **params) ->
mask. ``curation.json`` also scores the kept genes against the truth's ``active`` flag
(precision, recall), so curations are compared on what they should keep.
"""

from __future__ import annotations

import inspect
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from scaling.atomic import atomic_folder, check_out
from scaling.errors import InputError
from scaling.shards.dataset import open_dataset, well_table
from scaling.shards.format import KEY_COLUMNS


def random_selection(
    wells: pd.DataFrame,
    rng,
    ds=None,
    fraction: float | None = None,
    wells_count: int | None = None,
) -> np.ndarray:
    """A uniform sample of wells, controls included (they are drawn like any other well)."""
    n = len(wells)
    if wells_count is None:
        fraction = 0.5 if fraction is None else fraction
        if not 0 < fraction <= 1:
            raise InputError(f"--fraction: must be in (0, 1], got {fraction}")
        wells_count = round(fraction * n)
    if not 0 < wells_count <= n:
        raise InputError(f"--wells: must be in 1..{n}, got {wells_count}")
    mask = np.zeros(n, bool)
    mask[rng.choice(n, wells_count, replace=False)] = True
    return mask


def phenoprints_selection(
    wells: pd.DataFrame,
    rng,
    ds=None,
    reference: str | None = None,
    block: int | None = None,
    p_value: float = 0.01,
    min_experiments: int = 3,
    min_wells: int = 20,
    control_fraction: float = 0.3,
    seed: int = 0,
) -> np.ndarray:
    """Consistency-curated wells (ARCHITECTURE section 1, "Phenoprints"): a perturbation is
    kept when its replicate consistency under a reference embedding beats the control null
    at ``p < p_value`` (``consistency.perturbation_pvalues`` after TVN) and it appears in at least
    ``min_experiments`` experiments and ``min_wells`` wells; plus a random
    ``control_fraction`` of the control wells. In a screen with compounds, all of it is
    computed on the gene screen alone (``evaluate.compounds.gene_wells``): compound wells
    and the controls of compound plates are never kept.

    The reference is a checkpoint's block ``block`` (default: its last) or, with no
    checkpoint, the hand-crafted features. The count thresholds are scaled to the world:
    each is capped at what the typical perturbation of this dataset has (the number of
    experiments; the median wells per perturbation), so the paper's 3 experiments and 20
    wells apply to whole-genome screens and a small world is not emptied by them.
    """
    from scaling.evaluate.compounds import gene_wells
    from scaling.evaluate.consistency import perturbation_pvalues
    from scaling.evaluate.table import read_compounds
    from scaling.evaluate.tvn import tvn

    if not 0 < p_value < 1:
        raise InputError(f"--p-value: must be in (0, 1), got {p_value}")
    if not 0 <= control_fraction <= 1:
        raise InputError(f"--control-fraction: must be in [0, 1], got {control_fraction}")
    if min(min_experiments, min_wells) < 1:
        raise InputError("--min-experiments, --min-wells: must be at least 1")
    ref_wells, x = reference_embedding(ds, reference, block)
    gene = np.ones(len(wells), bool)
    compounds = read_compounds(ds.truth)
    if compounds is not None:  # the gene screen alone, as without compounds (never kept)
        ref = gene_wells(ref_wells, compounds)
        ref_wells, x = ref_wells[ref].reset_index(drop=True), x[ref]
        gene = gene_wells(wells, compounds)
    x = tvn(x, ref_wells["is_control"].to_numpy(), ref_wells["experiment"].to_numpy())
    pv = perturbation_pvalues(ref_wells, x, seed=seed).set_index("perturbation")
    genes = wells[~wells["is_control"] & gene]
    n_wells = genes.groupby("perturbation").size()
    n_exps = genes.groupby("perturbation")["experiment"].nunique()
    need_exps = min(min_experiments, wells["experiment"].nunique())
    need_wells = min(min_wells, int(n_wells.median()))
    consistent = pv.index[pv["p_value"] < p_value]
    keep = set(consistent) & set(n_wells.index[n_wells >= need_wells])
    keep &= set(n_exps.index[n_exps >= need_exps])
    mask = wells["perturbation"].isin(keep).to_numpy() & ~wells["is_control"].to_numpy()
    controls = np.flatnonzero(wells["is_control"].to_numpy() & gene)
    mask[rng.choice(controls, round(control_fraction * len(controls)), replace=False)] = True
    return mask


def reference_embedding(ds, reference: str | None, block: int | None):
    """Well embeddings used to judge consistency: (wells, X (n_wells, D))."""
    if reference is None:
        from scaling.evaluate.baselines import handcrafted_wells

        return handcrafted_wells(ds)
    from scaling.evaluate.embed import embed_wells, load_spec

    spec = load_spec(reference)
    b = spec.depth if block is None else block
    if not 1 <= b <= spec.depth:
        raise InputError(f"--block: must be in 1..{spec.depth}, got {b}")
    wells, e = embed_wells(ds, spec)
    return wells, e[b - 1]


def reference_inputs(params: dict) -> list[Path]:
    """What a ``reference`` checkpoint (or run folder) option reads, checked before use."""
    if params.get("reference") is None:
        return []
    from scaling.evaluate.evaluate import checkpoint_inputs

    return checkpoint_inputs(params["reference"])


def truth_scores(chosen: pd.DataFrame, truth) -> dict | None:
    """Precision and recall of the kept genes (compound treatments are not genes) against
    the truth's ``active`` flag."""
    from scaling.evaluate.table import read_compounds

    path = truth / "perturbations.parquet"
    if not path.is_file():
        return None
    active = pd.read_parquet(path, columns=["perturbation", "active"])
    active = set(active.loc[active["active"], "perturbation"])
    kept = set(chosen.loc[~chosen["is_control"], "perturbation"])
    compounds = read_compounds(truth)
    if compounds is not None:
        kept -= set(compounds["perturbation"].astype(str))
    hits = len(kept & active)
    return {
        "kept_genes": len(kept),
        "active_genes": len(active),
        "precision": hits / len(kept) if kept else 0.0,
        "recall": hits / len(active) if active else 0.0,
    }


STRATEGIES: dict[str, Callable] = {"random": random_selection, "phenoprints": phenoprints_selection}


def curate(data, strategy: str, out, seed: int = 0, overwrite: bool = False, **params) -> dict:
    if strategy not in STRATEGIES:
        raise InputError(f"--strategy: {strategy!r} is not available (have {sorted(STRATEGIES)})")
    fn = STRATEGIES[strategy]
    params = {k: v for k, v in params.items() if v is not None}
    accepted = inspect.signature(fn).parameters
    for k in params:
        if k not in accepted:
            flag = "--wells" if k == "wells_count" else "--" + k.replace("_", "-")
            raise InputError(f"{flag}: not an option of the {strategy} strategy")
    ds = open_dataset(data)
    out = check_out(out, [data, ds.root, *reference_inputs(params)], overwrite)
    wells = well_table(ds)
    rng = np.random.default_rng([seed, 5])
    mask = fn(wells, rng, ds, **params)
    if not mask.any():
        raise InputError(f"--strategy {strategy}: selected no wells")
    chosen = wells[mask].sort_values(KEY_COLUMNS).reset_index(drop=True)
    info = {
        "strategy": strategy,
        "params": params,
        "seed": seed,
        "source": str(ds.root.resolve()),
        "wells": len(chosen),
        "source_wells": len(wells),
        "control_wells": int(chosen["is_control"].sum()),
        "perturbations": int(chosen.loc[~chosen["is_control"], "perturbation"].nunique()),
        "truth": truth_scores(chosen, ds.truth),
    }
    with atomic_folder(out) as tmp:
        chosen.to_parquet(tmp / "wells.parquet", index=False)
        if ds.truth.is_dir():
            shutil.copytree(ds.truth, tmp / "truth")
        (tmp / "curation.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
