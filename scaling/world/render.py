"""Render one site (field of view) of 6-channel Cell Painting from a phenotype vector.

Channels in RxRx3 order: nuclei (Hoechst), ER (ConA), actin (phalloidin), RNA/nucleoli
(SYTO14), mitochondria (MitoTracker), Golgi and membrane (WGA). Each phenotype feature
(``FEATURES``) moves one visible property: density, nucleus size and shape, cell size,
per-channel intensity, texture (mitochondrial granularity, nucleoli count, actin fibre
alignment, chromatin), ER spread and Golgi size. Batch effects follow biology: gain and
offset per channel, an illumination gradient, focus blur, and sensor noise.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from scaling.world.layout import PlateBatch

FEATURES = (
    "density",
    "nucleus_size",
    "nucleus_elongation",
    "cell_size",
    "intensity_nuclei",
    "intensity_er",
    "intensity_actin",
    "intensity_rna",
    "intensity_mito",
    "intensity_golgi",
    "mito_granularity",
    "nucleoli_count",
    "actin_alignment",
    "er_spread",
    "golgi_size",
    "chromatin_texture",
)
# the channel sets a world renders in: RxRx3's six stains (the rendering's own order), or
# JUMP Cell Painting's five, where AGP images actin, Golgi and plasma membrane together
STAINS = {
    "rxrx3": ("nuclei", "er", "actin", "rna", "mito", "golgi"),
    "jump": ("DNA", "ER", "RNA", "AGP", "Mito"),
}
BASE_INTENSITY = np.array([0.9, 0.55, 0.6, 0.45, 0.6, 0.5], np.float32)
SCALE = 200.0  # intensity 1.0 -> 200 grey levels


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


def _spots(shape, ys, xs, sigma: float) -> np.ndarray:
    """Gaussian spots of peak ~1 at the given (fractional) positions."""
    img = np.zeros(shape, np.float32)
    h, w = shape
    yi, xi = np.round(ys).astype(int), np.round(xs).astype(int)
    keep = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
    np.add.at(img, (yi[keep], xi[keep]), 1.0)
    return gaussian_filter(img, sigma) * (2 * np.pi * sigma**2)


def _place_cells(rng, n: int, size: int, spacing: float):
    """Up to ``n`` cell centres, no two closer than ``spacing`` (greedy dart throwing)."""
    cand = rng.uniform(-0.1 * size, 1.1 * size, (4 * n + 8, 2))
    kept: list[np.ndarray] = []
    for c in cand:
        if all(np.sum((c - k) ** 2) >= spacing**2 for k in kept):
            kept.append(c)
            if len(kept) == n:
                break
    return np.array(kept, np.float32)


def render_site(
    phenotype: np.ndarray, batch: PlateBatch, size: int, cells: float, rng: np.random.Generator
) -> np.ndarray:
    """Phenotype (F,) and a plate's batch effects -> uint8 image (6, size, size)."""
    f = np.asarray(phenotype, np.float32)
    area = (size / 128.0) ** 2
    n = max(1, int(rng.poisson(cells * area * np.exp(0.7 * f[0] + batch.density))))
    r_cell_mean = 13.0 * np.exp(0.5 * f[3])
    centres = _place_cells(rng, n, size, spacing=1.1 * r_cell_mean)
    n = len(centres)
    cy, cx = centres[:, 0, None, None], centres[:, 1, None, None]

    r_nuc = 6.5 * np.exp(0.5 * f[1]) * rng.lognormal(0.0, 0.1, n)
    elong = np.exp(1.0 * f[2] + rng.normal(0.0, 0.15, n))
    a, b = r_nuc * np.sqrt(elong), r_nuc / np.sqrt(elong)
    theta = rng.uniform(0, np.pi, n)
    r_cell = np.maximum(r_cell_mean * rng.lognormal(0.0, 0.12, n), 1.4 * a)

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy[None] - cy, xx[None] - cx  # (n, H, W)
    ct, st = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    u, v = dx * ct + dy * st, -dx * st + dy * ct
    rho = np.sqrt((u / a[:, None, None]) ** 2 + (v / b[:, None, None]) ** 2)
    nuc = _sigmoid((1.0 - rho) * 1.5 * b[:, None, None]).max(0)

    dist = np.sqrt(dx**2 + dy**2)
    ang = np.arctan2(dy, dx)
    ph = rng.uniform(0, 2 * np.pi, (2, n, 1, 1))
    edge = r_cell[:, None, None] * (
        1 + 0.12 * np.sin(3 * ang + ph[0]) + 0.07 * np.sin(5 * ang + ph[1])
    )
    cell_each = _sigmoid((edge - dist) * 0.8)
    owner = cell_each.argmax(0)
    cell = cell_each.max(0)
    cyto = np.clip(cell - nuc, 0.0, 1.0)
    rim = 4.0 * cell * (1.0 - cell)
    d_own = np.take_along_axis(dist, owner[None], 0)[0] - r_nuc[owner]

    noise = gaussian_filter(rng.standard_normal((2, size, size)).astype(np.float32), (0, 1.2, 1.2))
    noise /= noise.std(axis=(1, 2), keepdims=True) + 1e-6
    img = np.empty((6, size, size), np.float32)

    # nuclei: chromatin texture grows with f[15]
    img[0] = nuc * np.clip(1.0 + 0.25 * np.exp(1.6 * f[15]) * noise[0], 0.2, None)
    # ER: perinuclear, decaying over a length set by f[13], reticular texture
    spread = 6.0 * np.exp(0.6 * f[13])
    img[1] = cyto * np.exp(-np.clip(d_own, 0, None) / spread) * np.clip(1 + 0.4 * noise[1], 0, None)
    # actin: stress fibres whose alignment is set by f[12], plus the cortical rim
    alpha = rng.uniform(0, np.pi) + rng.normal(0.0, 1.0 * np.exp(-1.6 * f[12]), n)
    al = alpha[owner]
    stripes = 0.5 + 0.5 * np.cos(2 * np.pi * (xx * np.cos(al) + yy * np.sin(al)) / 5.0)
    img[2] = cell * (0.35 + 0.45 * stripes) + 0.6 * rim
    # RNA: nucleoli, their number set by f[11], plus faint nucleus and cytoplasm
    k = rng.poisson(2.0 * np.exp(1.6 * f[11]), n) + 1
    owner_spot = np.repeat(np.arange(n), k)
    ru, rv = rng.uniform(-0.6, 0.6, (2, owner_spot.size))
    su, sv = ru * a[owner_spot], rv * b[owner_spot]
    t = theta[owner_spot]
    sy = centres[owner_spot, 0] + su * np.sin(t) + sv * np.cos(t)
    sx = centres[owner_spot, 1] + su * np.cos(t) - sv * np.sin(t)
    img[3] = 0.2 * cyto + 0.3 * nuc + _spots((size, size), sy, sx, 1.1)
    # mitochondria: puncta whose size (granularity) is set by f[10], same mean brightness
    sigma_m = 0.8 * np.exp(1.2 * f[10])
    p = min(0.5, 0.5 / (2 * np.pi * sigma_m**2))
    w = cyto * np.exp(-np.clip(d_own, 0, None) / (2 * spread))
    pts = np.nonzero(rng.random((size, size)) < p * w)
    img[4] = _spots((size, size), pts[0].astype(np.float32), pts[1].astype(np.float32), sigma_m)
    # Golgi and membrane: a perinuclear Golgi body sized by f[14], the membrane rim
    gang = rng.uniform(0, 2 * np.pi, n)
    gy = centres[:, 0] + 1.3 * r_nuc * np.sin(gang)
    gx = centres[:, 1] + 1.3 * r_nuc * np.cos(gang)
    img[5] = 0.15 * cell + 0.5 * rim + 0.8 * _spots((size, size), gy, gx, 2.0 * np.exp(1.2 * f[14]))

    img *= (BASE_INTENSITY * np.exp(0.6 * f[4:10]))[:, None, None]

    # technical variation: focus blur, gain, illumination gradient, offset, sensor noise
    if batch.blur > 0.05:
        img = gaussian_filter(img, (0, batch.blur, batch.blur))
    gain = batch.gain * rng.lognormal(0.0, batch.well_gain_sd, 6)
    ramp = (xx * np.cos(batch.gradient_angle) + yy * np.sin(batch.gradient_angle)) / size
    illum = 1.0 + batch.gradient * 2.0 * (ramp - ramp.mean())
    img = img * gain[:, None, None].astype(np.float32) * illum + batch.offset[:, None, None]
    img += rng.standard_normal(img.shape).astype(np.float32) * (0.01 + 0.02 * np.sqrt(np.abs(img)))
    return np.clip(img * SCALE, 0, 255).astype(np.uint8)


def in_stains(img: np.ndarray, stains: str) -> np.ndarray:
    """A rendered site (6, H, W) uint8 in the channels of ``STAINS[stains]``: JUMP's AGP is
    actin + Golgi/membrane (saturating at 255)."""
    if stains == "rxrx3":
        return img
    agp = np.minimum(img[2].astype(np.uint16) + img[5], 255).astype(np.uint8)
    return np.stack([img[0], img[1], img[3], agp, img[4]])
