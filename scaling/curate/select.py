"""``scaling curate``: selections of wells, written as a manifest (no pixels are copied).

Output: ``OUT/curation.json`` (strategy, parameters, source, counts), ``OUT/wells.parquet``
(experiment, plate, well, perturbation, is_control) and a copy of the source's truth
tables, so a curation folder is used wherever a dataset folder is.

Strategies register in ``STRATEGIES``: a function (wells table, rng, **params) -> mask.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from scaling.errors import InputError
from scaling.shards.dataset import open_dataset
from scaling.shards.format import KEY_COLUMNS


def well_table(ds) -> pd.DataFrame:
    """One row per well of the dataset (metadata only, pixels are not read)."""
    cols = KEY_COLUMNS + ["perturbation", "is_control"]
    frames = [pq.read_table(f, columns=cols).to_pandas() for f in ds.files]
    wells = pd.concat(frames).drop_duplicates(KEY_COLUMNS).reset_index(drop=True)
    if ds.wells is not None:
        keep = ds.wells.to_pandas()
        wells = wells.merge(keep, on=KEY_COLUMNS)
    return wells


def random_selection(
    wells: pd.DataFrame, rng, fraction: float | None = None, wells_count: int | None = None
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


STRATEGIES: dict[str, Callable] = {"random": random_selection}


def curate(data, strategy: str, out, seed: int = 0, overwrite: bool = False, **params) -> dict:
    if strategy not in STRATEGIES:
        raise InputError(f"--strategy: {strategy!r} is not available (have {sorted(STRATEGIES)})")
    ds = open_dataset(data)
    wells = well_table(ds)
    rng = np.random.default_rng([seed, 5])
    mask = STRATEGIES[strategy](wells, rng, **{k: v for k, v in params.items() if v is not None})
    chosen = wells[mask].sort_values(KEY_COLUMNS).reset_index(drop=True)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out}: exists and is not empty (pass --overwrite to replace it)")
    info = {
        "strategy": strategy,
        "params": {k: v for k, v in params.items() if v is not None},
        "seed": seed,
        "source": str(ds.root.resolve()),
        "wells": len(chosen),
        "source_wells": len(wells),
        "control_wells": int(chosen["is_control"].sum()),
        "perturbations": int(chosen.loc[~chosen["is_control"], "perturbation"].nunique()),
    }
    tmp = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir(parents=True)
        chosen.to_parquet(tmp / "wells.parquet", index=False)
        if ds.truth.is_dir():
            shutil.copytree(ds.truth, tmp / "truth")
        (tmp / "curation.json").write_text(json.dumps(info, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info
