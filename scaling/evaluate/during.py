"""In-training evaluation: every ``train.eval_every`` steps, probe all blocks on a small
fixed set of wells and report the best block's scores, so sweeps can select on biology and
not only on reconstruction.

The set is chosen once by the driver (:func:`probe_set`): the wells of a seeded sample of
perturbations (active or not: the probe tasks keep the active ones, ARCHITECTURE
section 4; compound treatments are left out), at most ``max_wells`` wells, one site each, cut into grid tiles. Workers embed
it with the model they train (:func:`probe_metrics`), exactly as ``scaling evaluate``
does, only on fewer wells.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from scaling.config import DataConfig
from scaling.errors import InputError
from scaling.evaluate.table import read_compounds
from scaling.model.precision import autocast
from scaling.shards.dataset import Dataset, open_dataset
from scaling.shards.format import KEY_COLUMNS
from scaling.stream.crops import GEOMETRY, decode_sites, grid_tiles
from scaling.stream.plan import read_sites, site_index

WELL_COLUMNS = ["experiment", "perturbation", "is_control"]


def probe_set(data, crop: int, max_wells: int = 256, seed: int = 0, index=None) -> dict:
    """The fixed wells of in-training probes: {"tiles": (T, C, crop, crop) uint8,
    "well": (T,) well index, "wells": {column: list}, "truth": {column: list}}. Chosen
    from the site index (``index``, read when None); only their row groups are read."""
    ds = data if isinstance(data, Dataset) else open_dataset(data)
    path = ds.truth / "perturbations.parquet"
    if not path.is_file():
        raise InputError(f"{path}: train.eval_every needs the truth table of the dataset")
    truth = pd.read_parquet(path, columns=["perturbation", "pathway", "active"])
    sites = site_index(ds, DataConfig(seed=seed)) if index is None else index
    sites = sites[sites["site"] == sites.groupby(KEY_COLUMNS)["site"].transform("min")]
    sites = sites[~sites["is_control"]].sort_values(KEY_COLUMNS)
    compounds = read_compounds(ds.truth)
    if compounds is not None:  # compound treatments are in no probe task
        sites = sites[~sites["perturbation"].isin(compounds["perturbation"])]
    perts = np.sort(sites["perturbation"].unique())
    per = max(1, len(sites) // max(1, len(perts)))
    rng = np.random.default_rng([seed, 7])
    chosen = set(rng.permutation(perts)[: max(1, max_wells // per)])
    sites = sites[sites["perturbation"].isin(chosen)].head(max_wells).reset_index(drop=True)
    tiles, well = [], []
    table = read_sites(ds, sites, GEOMETRY + ["pixels"])  # in (file, group, row) order
    order = sites.sort_values(["file", "group", "row"]).index
    for i, site in zip(order, decode_sites(table), strict=True):
        t = grid_tiles(site, crop)
        tiles.append(t)
        well += [i] * len(t)
    if not tiles or not len(tiles[0]):
        raise InputError(f"{ds.root}: no {crop} px tiles for train.eval_every")
    return {
        "tiles": np.ascontiguousarray(np.concatenate(tiles)),
        "well": np.asarray(well),
        "wells": sites[WELL_COLUMNS].to_dict("list"),
        "truth": truth.to_dict("list"),
    }


@torch.no_grad()
def embed_set(model, ps: dict, batch: int, device, precision: str = "fp32") -> np.ndarray:
    """Every block's well embeddings of the probe set: (n_blocks, n_wells, D) float32."""
    out = []
    tiles = torch.from_numpy(ps["tiles"])
    for i in range(0, len(tiles), batch):
        x = tiles[i : i + batch].to(device)
        with autocast(precision, device):
            out.append(model.embed_blocks(x).float().cpu())
    e = torch.cat(out).numpy()  # (T, B, D)
    well = ps["well"]
    n = int(well.max()) + 1
    sums = np.zeros((n, *e.shape[1:]), np.float64)
    np.add.at(sums, well, e)
    return (
        (sums / np.bincount(well, minlength=n)[:, None, None]).transpose(1, 0, 2).astype(np.float32)
    )


def probe_metrics(E: np.ndarray, ps: dict) -> dict:
    """Probe every block of E (n_blocks, n_wells, D): b*, its validation score (mean over
    tasks), and each task's test balanced accuracy at b*."""
    from scaling.evaluate.probes import probe_blocks

    wells = pd.DataFrame(ps["wells"])
    df, best = probe_blocks(wells, E, pd.DataFrame(ps["truth"]))
    at = df[df["block"] == best]
    val = at[at["split"] == "validation"]["balanced_accuracy"].mean()
    metrics = {"probe_best_block": int(best), "probe_best_val": float(val)}
    for _, r in at[at["split"] == "test"].iterrows():
        metrics[f"probe_{r['task']}"] = float(r["balanced_accuracy"])
    return metrics
