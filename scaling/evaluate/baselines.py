"""Baseline well embeddings that need no training: hand-crafted features and raw-pixel PCA.

- :func:`site_features`: CellProfiler-like measurements of one site (C, H, W) uint8 ->
  (F,) float32, named by :data:`FEATURE_NAMES`: per-channel intensity statistics, texture
  (gradient energy, orientation coherence, a granularity spectrum), intensity inside
  nuclei and cytoplasm and its perinuclear-to-distal ratio, plus nucleus and cell measures
  from a simple segmentation (nuclei: Otsu threshold on the nuclei channel, touching nuclei
  split by distance-transform peaks; cells: Otsu threshold on the ER + actin + membrane
  channels). numpy/scipy only. Each channel's role comes from its name (:func:`stains`:
  Hoechst/DNA, ER, actin, Golgi/WGA, AGP, RNA/SYTO14, Mito, brightfield, as RxRx3 and JUMP
  name them); a channel of another name still gets its per-channel features.
- :func:`handcrafted_wells`: those features for every site of a dataset (curations
  respected), averaged to wells, one Ray task per shard.
- :func:`pixel_pca_wells`: each site block-mean downsampled to size x size per channel
  (raw intensities; optionally self-standardised as the model's input), flattened,
  projected on a seeded PCA fit on (a sample of) the sites, averaged to wells.

(The random-init ViT baseline is the MAE embedder with untrained weights, in ``embed``.)
Both return ``(wells, X)``: wells sorted by (experiment, plate, well) with columns
experiment, plate, well, perturbation, is_control; X (n_wells, F) float32.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import ray
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from scaling.errors import InputError
from scaling.model.mae import self_standardize
from scaling.parallel import init_ray, parallel_map
from scaling.shards.dataset import Dataset, open_dataset, read_selected
from scaling.shards.format import CHANNELS, KEY_COLUMNS
from scaling.stream.crops import decode_sites, held_out, site_ids

WELL_COLUMNS = KEY_COLUMNS + ["perturbation", "is_control"]
# known stain names (lower case) -> role: "nuclei" segments nuclei, "cell" stains (ER,
# actin, Golgi/membrane, JUMP's AGP) segment cells, "rna" finds nucleoli, "other" is measured
ROLES = {
    **dict.fromkeys(("nuclei", "dna", "hoechst", "dapi"), "nuclei"),
    **dict.fromkeys(("er", "cona", "actin", "phalloidin", "golgi", "wga", "agp"), "cell"),
    **dict.fromkeys(("membrane", "golgi_membrane"), "cell"),
    **dict.fromkeys(("rna", "syto14", "nucleoli"), "rna"),
    **dict.fromkeys(("mito", "mitotracker", "brightfield", "bf"), "other"),
}
PERCENTILES = (10, 50, 90, 99)
GRANULARITY = (3, 5, 9)  # square openings: signal in structures smaller than each size
NEAR, FAR = 4.0, 12.0  # perinuclear ring (0, NEAR] and distal ring (NEAR, FAR], pixels

_PER_CHANNEL = (
    ["mean", "sd"]
    + [f"p{q}" for q in PERCENTILES]
    + ["mean_in_nuclei", "mean_in_cytoplasm", "perinuclear_ratio"]
    + ["gradient_energy", "coherence"]
    + [f"granularity_{s}" for s in GRANULARITY]
)
_MORPHOLOGY = [
    "nuclei_per_10k_px",
    "nuclei_area_fraction",
    "nucleus_area_per_nucleus",
    "nucleus_area_median",
    "nucleus_area_sd",
    "nucleus_elongation",
    "nucleus_eccentricity",
    "cell_area_fraction",
    "cell_area_per_nucleus",
    "cytoplasm_fraction",
    "nucleoli_per_nucleus",
]


@dataclass(frozen=True)
class Stains:
    """The roles of a site's channels (C axis indices), from their names (``ROLES``)."""

    names: tuple[str, ...]
    nuclei: int
    cell: tuple[int, ...]  # segment cells; none: a cell is its nucleus
    rna: int | None  # nucleoli are counted in it; None: no nucleoli feature
    unmapped: tuple[str, ...]  # names of no known stain: per-channel features only

    @property
    def feature_names(self) -> tuple[str, ...]:
        morphology = [m for m in _MORPHOLOGY if self.rna is not None or m != "nucleoli_per_nucleus"]
        return tuple(f"{ch}_{f}" for ch in self.names for f in _PER_CHANNEL) + tuple(morphology)


def stains(names) -> Stains:
    """Map channel names to roles; an ``InputError`` when no channel stains nuclei."""
    names = tuple(names)
    role = [ROLES.get(n.lower()) for n in names]
    if "nuclei" not in role:
        raise InputError(
            f"handcrafted: no nuclei stain among channels {list(names)} "
            f"(known names: {', '.join(k for k, v in ROLES.items() if v == 'nuclei')})"
        )
    return Stains(
        names,
        role.index("nuclei"),
        tuple(i for i, r in enumerate(role) if r == "cell"),
        role.index("rna") if "rna" in role else None,
        tuple(n for n, r in zip(names, role, strict=True) if r is None),
    )


RXRX3 = stains(CHANNELS)
FEATURE_NAMES = RXRX3.feature_names  # of a six-channel RxRx3 site


def otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a float array (maximal between-class variance over ``bins``)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[np.argmax(between)])


def segment_nuclei(nuclei: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nuclei channel (H, W) -> (foreground mask (H, W) bool, seeds (H, W) int labels).

    Foreground: Otsu threshold of the channel smoothed at sigma 1, holes filled, specks
    under 12 px dropped. Seeds: one per nucleus, the peaks (plateaus merged) of the
    smoothed distance transform of the mask, at least 2.5 px deep and a 9 px window apart,
    so touching nuclei count separately. The nucleus count is ``seeds.max()``.
    """
    smooth = ndi.gaussian_filter(nuclei.astype(np.float32), 1.0)
    if smooth.max() - smooth.min() < 1e-6:
        return np.zeros(smooth.shape, bool), np.zeros(smooth.shape, np.int32)
    fg = ndi.binary_fill_holes(smooth > otsu(smooth))
    lab, n = ndi.label(fg)
    if n:
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        fg = (sizes >= 12)[lab] & fg
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(fg).astype(np.float32), 1.0)
    peaks = (dist == ndi.maximum_filter(dist, size=9)) & (dist >= 2.5)
    seeds, _ = ndi.label(peaks, structure=np.ones((3, 3)))
    return fg, seeds


def _object_shapes(fg: np.ndarray, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Areas (m,) and second-moment axis ratios major/minor (m,) of the connected components
    of ``fg`` that hold exactly one seed and do not touch the border."""
    lab, n = ndi.label(fg)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    m = n + 1
    on = seeds > 0
    base = int(seeds.max()) + 1
    pairs = np.unique(lab[on].astype(np.int64) * base + seeds[on])  # (object, seed) pairs
    keep = np.bincount(pairs // base, minlength=m) == 1
    keep[np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])] = False
    keep[0] = False
    ys, xs = np.nonzero(lab)
    ls = lab[ys, xs]
    area = np.bincount(ls, minlength=m).astype(np.float64)
    a = np.maximum(area, 1)
    my, mx = np.bincount(ls, ys, m) / a, np.bincount(ls, xs, m) / a
    dy, dx = ys - my[ls], xs - mx[ls]
    syy = np.bincount(ls, dy * dy, m) / a + 1 / 12
    sxx = np.bincount(ls, dx * dx, m) / a + 1 / 12
    sxy = np.bincount(ls, dy * dx, m) / a
    half = np.sqrt(((syy - sxx) / 2) ** 2 + sxy**2)
    l1, l2 = (syy + sxx) / 2 + half, np.maximum((syy + sxx) / 2 - half, 1e-6)
    return area[keep], np.sqrt(l1 / l2)[keep]


def site_features(site: np.ndarray, roles: Stains = RXRX3) -> np.ndarray:
    """One site (C, H, W) uint8 whose channels ``roles`` names (default RxRx3's six) ->
    (len(roles.feature_names),) float32.

    Intensities are grey levels; texture and granularity are ratios to the channel's mean
    (gain-free); sizes are pixels. Empty images give finite values (counts 0, ratios 1).
    """
    if site.ndim != 3 or site.shape[0] != len(roles.names):
        raise InputError(f"site_features: expected ({len(roles.names)}, H, W), got {site.shape}")
    img = site.astype(np.float32)
    c, h, w = img.shape
    flat = img.reshape(c, -1)
    mean = flat.mean(1)
    eps = 1.0  # one grey level: keeps ratios finite on dark channels

    fg, seeds = segment_nuclei(img[roles.nuclei])
    count = int(seeds.max())
    n_eff = max(count, 1)
    cell = segment_cells(img, roles.cell, fg)
    cyto = cell & ~fg
    d_nuc = ndi.distance_transform_edt(~fg) if fg.any() else np.full((h, w), np.inf)
    near, far = cyto & (d_nuc <= NEAR), cyto & (d_nuc > NEAR) & (d_nuc <= FAR)

    def masked_mean(mask):
        return img[:, mask].mean(1) if mask.any() else np.zeros(c, np.float32)

    in_nuc, in_cyto, m_near, m_far = (masked_mean(m) for m in (fg, cyto, near, far))

    # Sobel per channel: on the (C, H, W) stack its smoothing would also run across channels
    gy = np.stack([ndi.sobel(ch, axis=0) for ch in img])
    gx = np.stack([ndi.sobel(ch, axis=1) for ch in img])
    grad = np.sqrt(gx**2 + gy**2).reshape(c, -1).mean(1) / 8  # Sobel sums 8 pixel steps
    jyy, jxx, jxy = (ndi.gaussian_filter(g, (0, 3, 3)) for g in (gy * gy, gx * gx, gx * gy))
    coh = np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2).reshape(c, -1).sum(1)
    coh /= (jxx + jyy).reshape(c, -1).sum(1) + 1e-6

    base = img - np.percentile(flat, 5, axis=1)[:, None, None]  # background-free signal
    total = np.maximum(base, 0).reshape(c, -1).mean(1) + eps
    prev, gran = np.maximum(base, 0).reshape(c, -1).mean(1), []
    for s in GRANULARITY:
        opened = np.maximum(ndi.grey_opening(base, size=(1, s, s)), 0).reshape(c, -1).mean(1)
        gran.append((prev - opened) / total)
        prev = opened

    per_channel = np.stack(
        [mean, flat.std(1)]
        + list(np.percentile(flat, PERCENTILES, axis=1))
        + [in_nuc, in_cyto, (m_near + eps) / (m_far + eps)]
        + [grad / (mean + eps), coh]
        + gran,
        axis=1,
    )  # (C, len(_PER_CHANNEL))

    areas, ratios = _object_shapes(fg, seeds)
    fg_area, cell_area = float(fg.sum()), float(cell.sum())
    morphology = [
        count * 1e4 / (h * w),
        fg_area / (h * w),
        fg_area / n_eff,
        float(np.median(areas)) if len(areas) else 0.0,
        float(areas.std()) if len(areas) else 0.0,
        float(np.median(ratios)) if len(ratios) else 1.0,
        float(np.median(np.sqrt(1 - 1 / ratios**2))) if len(ratios) else 0.0,
        cell_area / (h * w),
        cell_area / n_eff,
        float(cyto.sum()) / max(cell_area, 1.0),
    ]
    if roles.rna is not None:
        morphology.append(nucleoli(img[roles.rna], fg) / n_eff)
    return np.concatenate([per_channel.ravel(), morphology]).astype(np.float32)


def segment_cells(img: np.ndarray, cell: tuple[int, ...], fg: np.ndarray) -> np.ndarray:
    """Cell mask (H, W): Otsu threshold on the sum of the ``cell`` channels, each scaled by
    its 99th percentile and smoothed at sigma 2, united with the nuclei ``fg``; the nuclei
    alone when no channel stains cells."""
    if not cell:
        return fg
    eps = 1.0
    peak = np.percentile(img[list(cell)].reshape(len(cell), -1), 99, axis=1)
    signal = ndi.gaussian_filter(
        sum(img[ch] / (p + eps) for ch, p in zip(cell, peak, strict=True)), 2.0
    )
    return (signal > otsu(signal)) | fg


def nucleoli(rna: np.ndarray, fg: np.ndarray) -> float:
    """Nucleoli in the nuclei ``fg``: local maxima (5 px window) of the RNA channel's
    difference of Gaussians (sigma 1 - 3) above half the median RNA level in nuclei."""
    dog = ndi.gaussian_filter(rna, 1.0) - ndi.gaussian_filter(rna, 3.0)
    spots = (dog == ndi.maximum_filter(dog, size=5)) & fg
    spots &= dog > 0.5 * (np.median(rna[fg]) if fg.any() else np.inf)
    return float(spots.sum())


def _shard_sites(path: str, selected: frozenset | None) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """One shard's selected sites: (metadata per site, arrays (C, H, W))."""
    table = read_selected(path, selected)
    meta = table.select(WELL_COLUMNS + ["site"]).to_pandas()
    meta["site_id"] = site_ids(table)
    return meta, decode_sites(table)


def _well_sums(meta: pd.DataFrame, vectors: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """Per-site vectors (n_sites, F) -> (wells with an ``n`` column, sums (n_wells, F)
    float64), wells in first-seen order."""
    codes, uniques = pd.factorize(pd.MultiIndex.from_frame(meta[KEY_COLUMNS]))
    sums = np.zeros((len(uniques), vectors.shape[1]), np.float64)
    np.add.at(sums, codes, vectors)
    first = meta.drop_duplicates(KEY_COLUMNS)[WELL_COLUMNS].reset_index(drop=True)
    first["n"] = np.bincount(codes, minlength=len(uniques))
    return first, sums


def _combine(parts: list[tuple[pd.DataFrame, np.ndarray]]) -> tuple[pd.DataFrame, np.ndarray]:
    """Per-shard well sums -> (wells sorted by experiment/plate/well, means float32)."""
    parts = [(w, s) for w, s in parts if len(w)]
    if not parts:
        raise InputError("baselines: the dataset has no selected sites")
    wells = pd.concat([w for w, _ in parts], ignore_index=True)
    sums = np.concatenate([s for _, s in parts])
    codes, uniques = pd.factorize(pd.MultiIndex.from_frame(wells[KEY_COLUMNS]))
    total = np.zeros((len(uniques), sums.shape[1]), np.float64)
    np.add.at(total, codes, sums)
    n = np.bincount(codes, weights=wells["n"], minlength=len(uniques))
    first = wells.drop_duplicates(KEY_COLUMNS)[WELL_COLUMNS].reset_index(drop=True)
    order = first.sort_values(KEY_COLUMNS).index.to_numpy()
    X = (total / n[:, None])[order].astype(np.float32)
    return first.iloc[order].reset_index(drop=True), X


def _selection(data) -> tuple[list[str], object]:
    """Shard paths of a dataset (a folder, a curation, or an open ``Dataset``) and its
    selection (an object-store ref, or None)."""
    ds = data if isinstance(data, Dataset) else open_dataset(data)
    keys = ds.selected_keys()
    init_ray()
    return [str(f) for f in ds.files], None if keys is None else ray.put(frozenset(keys))


def _handcrafted_shard(path: str, selected, roles: Stains) -> tuple[pd.DataFrame, np.ndarray]:
    meta, sites = _shard_sites(path, selected)
    feats = np.stack([site_features(s, roles) for s in sites]) if sites else np.zeros((0, 0))
    return _well_sums(meta, feats.reshape(len(sites), len(roles.feature_names)))


def handcrafted_wells(data, progress: bool = True) -> tuple[pd.DataFrame, np.ndarray]:
    """Hand-crafted features of every selected site of a dataset (folder, curation or open
    ``Dataset``), averaged to wells: (wells, X (n_wells, len(stains(...).feature_names))
    float32), the channels' roles from their names (channels of unknown names are named on
    stderr). One Ray task per shard. Remembered in this process for the same shards (path,
    size, mtime) and selection: a ladder's phenoprints curation and its baselines both
    need them."""
    ds = data if isinstance(data, Dataset) else open_dataset(data)
    roles = stains(ds.channel_names)
    if roles.unmapped:
        print(
            f"handcrafted: no stain known for channels {list(roles.unmapped)}: "
            "per-channel features only",
            file=sys.stderr,
        )
    keys = ds.selected_keys()
    shards = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in map(Path, ds.files))
    key = (shards, None if keys is None else frozenset(keys))
    if key not in _LAST_HANDCRAFTED:
        init_ray()
        selected = None if keys is None else ray.put(key[1])
        jobs = [(f, selected, roles) for f, *_ in shards]
        parts = parallel_map(_handcrafted_shard, jobs, desc="features", progress=progress)
        _LAST_HANDCRAFTED.clear()  # one dataset's features at a time
        _LAST_HANDCRAFTED[key] = _combine(parts)
    wells, X = _LAST_HANDCRAFTED[key]
    return wells.copy(), X.copy()


_LAST_HANDCRAFTED: dict = {}


def downsample(site: np.ndarray, size: int, standardize: bool = False) -> np.ndarray:
    """Site (C, H, W) -> (C * size * size,) float32: cropped to a multiple of ``size`` (edge
    remainders dropped), block-mean pooled to size x size, flattened. Intensities are
    raw (grey level / 255), or with ``standardize`` self-standardised per channel as the
    model's input is (which removes each channel's mean intensity and contrast)."""
    c, h, w = site.shape
    if h < size or w < size:
        raise InputError(f"pixel PCA: site {h}x{w} is smaller than --size {size}")
    fy, fx = h // size, w // size
    x = torch.from_numpy(np.ascontiguousarray(site[:, : fy * size, : fx * size]))[None]
    x = self_standardize(x) if standardize else x.float() / 255
    return F.avg_pool2d(x, (fy, fx)).reshape(-1).numpy()


def _pixel_shard(
    path: str, selected, size: int, standardize: bool, seed: int, fraction: float
) -> tuple[tuple[pd.DataFrame, np.ndarray], np.ndarray]:
    """(well sums of downsampled sites, the downsampled sites in the seeded PCA sample)."""
    meta, sites = _shard_sites(path, selected)
    v = [downsample(s, size, standardize) for s in sites]
    v = np.stack(v) if v else np.zeros((0, 1), np.float32)
    sample = held_out(meta["site_id"].to_numpy(), seed, fraction)
    return _well_sums(meta, v), v[sample]


def pixel_pca_wells(
    data,
    dims: int = 64,
    size: int = 32,
    seed: int = 0,
    max_fit: int = 4096,
    standardize: bool = False,
    progress: bool = True,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Raw-pixel baseline: (wells, X (n_wells, dims) float32).

    Sites are downsampled (:func:`downsample`; raw intensities by default), a PCA is fit on a seeded sample of about
    ``max_fit`` sites (a hash of the site id, the same on any worker; randomised SVD with a
    seeded generator, component signs fixed), and every well is the mean of its sites'
    projections (= the projection of the mean of its downsampled sites, as PCA is affine).
    """
    if dims < 1 or size < 1:
        raise InputError(f"pixel PCA: dims and size must be positive, got {dims}, {size}")
    files, selected = _selection(data)
    n_sites = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    fraction = min(1.0, max_fit / max(n_sites, 1))
    out = parallel_map(
        _pixel_shard,
        [(f, selected, size, standardize, seed, fraction) for f in files],
        desc="pixels",
        progress=progress,
    )
    fit = torch.from_numpy(np.concatenate([s for _, s in out if len(s)]))
    if dims > min(fit.shape):
        raise InputError(
            f"pixel PCA: --dims {dims} exceeds the fit sample ({fit.shape[0]} sites x "
            f"{fit.shape[1]} pixels)"
        )
    mu = fit.mean(0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        _, _, V = torch.pca_lowrank(fit - mu, q=min(dims + 10, *fit.shape), center=False, niter=6)
    V = V[:, :dims]
    V = V * torch.sign(V[V.abs().argmax(0), torch.arange(dims)])  # largest loading positive
    wells, means = _combine([p for p, _ in out])
    X = (torch.from_numpy(means) - mu) @ V
    return wells, X.numpy().astype(np.float32)
