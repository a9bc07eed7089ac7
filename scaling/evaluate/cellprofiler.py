"""The ``cellprofiler`` baseline: CellProfiler's per-cell measurements (cp-measure), median
per well.

Per site (C, H, W) uint8: nuclei and cells are segmented as the ``handcrafted`` baseline
does (:func:`~scaling.evaluate.baselines.segment_nuclei`, ``segment_cells``) and turned
into label images (:func:`label_objects`: nucleus i and cell i are one cell). Each cell is
measured with cp-measure (CellProfiler's own code) on intensities scaled to [0, 1]:

- ``Cells_{channel}_Intensity_*`` and ``Nuclei_{channel}_Intensity_*`` (mean, quartiles,
  edge intensities, ...), every channel;
- ``Cells_{channel}_Texture_*``: Haralick features at scale 3, 4 directions, the image
  quantised to 16 grey levels (CellProfiler's default is 256);
- ``Cells_{channel}_Granularity_1..8``: the granular spectrum of the cell image at
  CellProfiler's 0.25 subsampling, 8 steps, not 16 (at 0.25 a 128 px site is 32 px wide,
  so steps past 8 open away whole cells; half the cost);
- ``Cells_AreaShape_*`` and ``Nuclei_AreaShape_*``: size/shape once per object type,
  Zernike shape moments and Feret diameters included;
- ``Cells_{A}_{B}_Correlation_*``: Pearson (and slope), Manders and RWC colocalisation of
  channel pairs chosen by stain (:data:`PAIRS`: DNA-RNA, ER-Mito, AGP-Mito; a pair with a
  missing stain is skipped and named).

Dropped for their cost, measured per 128 px site by :func:`time_families` on the tiny
world (README has the table; everything kept costs about 140 ms per six-channel site on
one core of a shared 2-core machine): Costes colocalisation (about 150 ms for the three
pairs, more than any kept family), the radial intensity distribution and its Zernikes
(about 95 ms for six channels; a per-channel profile that the intensity quartiles and
edge features partly carry), and texture at CellProfiler's 256 grey levels (about 600
ms, 20x the cost at 16). Position-bound features (locations, centres, bounding-box
corners, spatial moments, orientation) are dropped: they describe where a cell lies in
the field, not its phenotype.

A well's profile is the median over the cells of its (sampled) sites, feature by feature
(undefined values skipped), plus ``Cells_per_site``; a well with no cell takes the median
of the other wells. Features that are non-finite in a well or constant across wells are
then dropped (their count is logged on stderr and returned).
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import ray
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from scaling.errors import InputError
from scaling.evaluate.baselines import (
    ROLES,
    WELL_COLUMNS,
    Stains,
    segment_cells,
    segment_nuclei,
    stains,
)
from scaling.parallel import init_ray, parallel_map
from scaling.shards.dataset import Dataset, open_dataset, well_keys
from scaling.shards.format import KEY_COLUMNS
from scaling.stream.crops import decode_sites, site_ids

# stain -> its channel names (lower case), for the colocalisation pairs; finer than the
# handcrafted roles, which put ER and AGP together as cell stains
STAIN_NAMES = {
    "DNA": tuple(k for k, v in ROLES.items() if v == "nuclei"),
    "RNA": tuple(k for k, v in ROLES.items() if v == "rna"),
    "ER": ("er", "cona"),
    "Mito": ("mito", "mitotracker"),
    "AGP": ("agp", "actin", "phalloidin", "golgi", "wga", "membrane", "golgi_membrane"),
}
PAIRS = (("DNA", "RNA"), ("ER", "Mito"), ("AGP", "Mito"))
TEXTURE_LEVELS = 16
GRANULARITY_STEPS = 8
COLOCALISATION = ("pearson", "manders_fold", "rwc")  # Costes: see the module doc
POSITIONAL = ("Location_", "Center_", "BoundingBoxM", "SpatialMoment_", "Orientation")


def label_objects(site: np.ndarray, roles: Stains) -> tuple[np.ndarray, np.ndarray]:
    """Site (C, H, W) -> (nuclei, cells) label images (H, W) int32, labels 1..n in both.

    Nuclei: each seed of ``segment_nuclei`` grown over its foreground by watershed on the
    distance transform (foreground pieces with no seed stay 0). Cells: the nuclei grown
    over the ``segment_cells`` mask, each pixel to its nearest nucleus through the mask
    (cell-mask pieces that hold no nucleus stay 0), so cell i contains nucleus i.
    """
    img = site.astype(np.float32)
    fg, seeds = segment_nuclei(img[roles.nuclei])
    if seeds.max() == 0:
        empty = np.zeros(fg.shape, np.int32)
        return empty, empty
    nuclei = watershed(-ndi.distance_transform_edt(fg), seeds, mask=fg).astype(np.int32)
    mask = segment_cells(img, roles.cell, nuclei > 0)
    cells = watershed(ndi.distance_transform_edt(nuclei == 0), nuclei, mask=mask)
    return nuclei, cells.astype(np.int32)


def coloc_pairs(names) -> tuple[list[tuple[str, int, str, int]], list[str]]:
    """Channel names -> (pairs (stain A, channel index, stain B, channel index), the
    skipped pairs named ``A-B``). A stain's channel is the first whose name it lists."""
    lower = [n.lower() for n in names]
    where = {
        s: next((i for i, n in enumerate(lower) if n in ns), None) for s, ns in STAIN_NAMES.items()
    }
    kept = [(a, where[a], b, where[b]) for a, b in PAIRS if None not in (where[a], where[b])]
    skipped = [f"{a}-{b}" for a, b in PAIRS if None in (where[a], where[b])]
    return kept, skipped


def _funcs():
    from cp_measure.bulk import get_core_measurements, get_correlation_measurements

    return get_core_measurements(), get_correlation_measurements()


def _keep(name: str) -> bool:
    return not any(p in name for p in POSITIONAL)


def _families(site: np.ndarray, roles: Stains, pairs) -> tuple[list, int]:
    """The measurements of one site: ([(family, prefix, thunk)], number of cells); each
    thunk returns cp-measure's dict of per-cell arrays (n_cells,)."""
    core, corr = _funcs()
    nuclei, cells = label_objects(site, roles)
    x = site.astype(np.float32) / 255
    tex, gran, out = core["texture"], core["granularity"], []
    for objects, lab in (("Cells", cells), ("Nuclei", nuclei)):
        for fam in ("sizeshape", "zernike", "feret"):
            out.append((fam, f"{objects}_AreaShape", lambda f=core[fam], m=lab: f(m, x[0])))
    for c, ch in enumerate(roles.names):
        for objects, lab in (("Cells", cells), ("Nuclei", nuclei)):
            run = lambda f=core["intensity"], m=lab, c=c: f(m, x[c])  # noqa: E731
            out.append(("intensity", f"{objects}_{ch}", run))
        run = lambda c=c: tex(cells, x[c], gray_levels=TEXTURE_LEVELS)  # noqa: E731
        out.append(("texture", f"Cells_{ch}_Texture", run))
        run = lambda c=c: gran(cells, x[c], granular_spectrum_length=GRANULARITY_STEPS)  # noqa: E731
        out.append(("granularity", f"Cells_{ch}", run))
    for a, i, b, j in pairs:
        for fam in COLOCALISATION:
            run = lambda f=corr[fam], i=i, j=j: f(x[i], x[j], cells)  # noqa: E731
            out.append((fam, f"Cells_{a}_{b}", run))
    return out, int(cells.max())


def site_cells(site: np.ndarray, roles: Stains, pairs, times: dict | None = None) -> pd.DataFrame:
    """One site (C, H, W) uint8 -> its cells' measurements (n_cells, F) float32, columns
    named ``{Objects}_{channel or pair}_{cp-measure name}``; no columns without cells.
    ``times``, if given, gains each family's seconds (segmentation as ``segment``)."""
    t0 = time.perf_counter()
    thunks, n = _families(site, roles, pairs)
    if times is not None:
        times["segment"] = times.get("segment", 0.0) + time.perf_counter() - t0
    if n == 0:
        return pd.DataFrame()
    cols = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flat objects warn and give NaN, skipped by the median
        for fam, prefix, run in thunks:
            t0 = time.perf_counter()
            for k, v in run().items():
                if _keep(k):
                    cols[f"{prefix}_{k}"] = np.asarray(v, np.float32)
            if times is not None:
                times[fam] = times.get(fam, 0.0) + time.perf_counter() - t0
    return pd.DataFrame(cols)


def time_families(sites: list[np.ndarray], roles: Stains, pairs) -> pd.DataFrame:
    """Milliseconds per site of each measurement family over ``sites`` (all channels,
    objects and pairs together): columns family, ms_per_site, sorted by cost."""
    times: dict = {}
    for s in sites:
        site_cells(s, roles, pairs, times)
    rows = [(k, 1e3 * v / max(len(sites), 1)) for k, v in times.items()]
    df = pd.DataFrame(rows, columns=["family", "ms_per_site"])
    return df.sort_values("ms_per_site", ascending=False, ignore_index=True)


def choose_sites(ds: Dataset, sites_per_well: int | None, seed: int) -> tuple[np.ndarray, set]:
    """(ids of the sites to measure (n,) int64, wells whose chosen sites lie in more than
    one shard). Metadata only. With ``sites_per_well``, each (selected) well keeps that
    many of its sites, drawn by a generator seeded with ``seed``; all of them otherwise."""
    frames = []
    for i, f in enumerate(ds.files):
        t = pq.read_table(f, columns=KEY_COLUMNS + ["site"])
        frames.append(pd.DataFrame({"key": well_keys(t).to_pylist(), "id": site_ids(t), "file": i}))
    df = pd.concat(frames, ignore_index=True)
    keys = ds.selected_keys()
    if keys is not None:
        df = df[df["key"].isin(keys)]
    if sites_per_well is not None:
        df = df.sort_values(["key", "id"], ignore_index=True)
        df["draw"] = np.random.default_rng(seed).random(len(df))
        df = df.sort_values(["key", "draw"]).groupby("key").head(sites_per_well)
    split = df.groupby("key")["file"].nunique()
    return np.sort(df["id"].to_numpy()), set(split.index[split > 1])


def _cp_shard(path: str, chosen, roles: Stains, pairs, split: set):
    """One shard's chosen sites -> (wells: WELL_COLUMNS + key, sites, cells; per-well
    medians indexed by key, for wells not in ``split``; the cells of ``split`` wells with
    a key column; seconds taken)."""
    t0 = time.perf_counter()
    table = pq.read_table(path)
    table = table.take(np.flatnonzero(np.isin(site_ids(table), chosen)))
    keys = well_keys(table).to_pylist()
    frames = [
        site_cells(s, roles, pairs).assign(key=k)
        for k, s in zip(keys, decode_sites(table), strict=True)
    ]
    cells = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"key": []})
    meta = table.select(WELL_COLUMNS).to_pandas().assign(key=keys)
    wells = meta.drop_duplicates("key").set_index("key")
    wells["sites"] = meta.groupby("key").size()
    wells["cells"] = cells.groupby("key").size().reindex(wells.index, fill_value=0)
    whole = cells[~cells["key"].isin(split)]
    medians = whole.groupby("key").median()
    return wells.reset_index(), medians, cells[cells["key"].isin(split)], time.perf_counter() - t0


def _profiles(parts) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Shard results -> (wells sorted by KEY_COLUMNS with sites and cells, medians (one row
    per well, that order; NaN for a well without cells) with ``Cells_per_site``)."""
    wells = pd.concat([w for w, *_ in parts], ignore_index=True)
    counts = wells.groupby("key")[["sites", "cells"]].sum()
    wells = wells.drop_duplicates("key").drop(columns=["sites", "cells"]).join(counts, on="key")
    wells = wells.sort_values(KEY_COLUMNS, ignore_index=True)
    medians = pd.concat([m for _, m, *_ in parts])
    split = pd.concat([c for _, _, c, _ in parts], ignore_index=True)
    if len(split):
        medians = pd.concat([medians, split.groupby("key").median()])
    medians = medians.reindex(wells["key"])
    medians["Cells_per_site"] = (wells["cells"] / wells["sites"]).to_numpy()
    return wells, medians


def cellprofiler_wells(
    data, sites_per_well: int | None = None, seed: int = 0, progress: bool = True
) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """CellProfiler features of a dataset (folder, curation or open ``Dataset``), median
    per well over the cells of its (sampled) sites: (wells sorted by experiment/plate/well
    with WELL_COLUMNS, X (n_wells, F) float32, info). One Ray task per shard.

    ``info``: sites_per_well (None: all), sites, cells, features (F), feature_names,
    dropped_features (non-finite in a well or constant across wells), empty_wells (no
    cell; given the median well), skipped_pairs, seconds (wall) and seconds_per_well.
    """
    if sites_per_well is not None and sites_per_well < 1:
        raise InputError(f"cellprofiler: sites_per_well must be positive, got {sites_per_well}")
    t0 = time.perf_counter()
    ds = data if isinstance(data, Dataset) else open_dataset(data)
    roles = stains(ds.channel_names)
    pairs, skipped = coloc_pairs(ds.channel_names)
    if skipped:
        print(f"cellprofiler: no channels for colocalisation pairs {skipped}", file=sys.stderr)
    chosen, split = choose_sites(ds, sites_per_well, seed)
    if not len(chosen):
        raise InputError(f"cellprofiler: {ds.root} has no selected sites")
    init_ray()
    ref = ray.put(chosen)
    jobs = [(str(f), ref, roles, pairs, split) for f in ds.files]
    parts = parallel_map(_cp_shard, jobs, desc="cellprofiler", progress=progress)
    wells, medians = _profiles(parts)
    empty = medians.drop(columns="Cells_per_site").isna().all(axis=1).to_numpy()
    medians[empty] = np.nan
    medians = medians.fillna(medians.median()) if empty.any() else medians
    X = medians.to_numpy(np.float64)
    keep = np.isfinite(X).all(0)
    keep[keep] = X[:, keep].max(0) > X[:, keep].min(0)
    seconds = time.perf_counter() - t0
    info = {
        "sites_per_well": sites_per_well,
        "sites": int(wells["sites"].sum()),
        "cells": int(wells["cells"].sum()),
        "features": int(keep.sum()),
        "dropped_features": int((~keep).sum()),
        "empty_wells": int(empty.sum()),
        "skipped_pairs": skipped,
        "seconds": seconds,
        "seconds_per_well": seconds / len(wells),
        "feature_names": list(medians.columns[keep]),
    }
    print(
        f"cellprofiler: {len(wells)} wells, {info['sites']} sites (sites_per_well "
        f"{sites_per_well or 'all'}), {info['cells']} cells, {info['features']} features "
        f"({info['dropped_features']} dropped: non-finite or constant), {seconds:.1f} s "
        f"({info['seconds_per_well']:.3f} s per well)",
        file=sys.stderr,
    )
    return wells[WELL_COLUMNS], X[:, keep].astype(np.float32), info
