"""Illumination correction (``scaling ingest --illum``): one flat field per plate and channel,
estimated from the plate's own images as CellProfiler's CorrectIlluminationCalculate does
with "Regular" intensities over all images of a plate, "Gaussian filter" smoothing and
"rescale":

1. the mean of every image of the channel on the plate (float64);
2. smoothed by a Gaussian filter of ``sigma`` pixels (default ``default_sigma``: a twentieth
   of the image's larger side, wide enough to blur cells away, narrow enough to keep the
   vignetting), edges reflected;
3. divided by its robust minimum, the 2nd percentile, and raised to at least 1.

The function is therefore >= 1 everywhere (1 at the dimmest part of the field); images are
divided by it, rounded and clipped to the input dtype, so the correction never saturates
a pixel and the dimmest part of the field keeps its intensities.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

ROBUST_PERCENTILE = 2.0


def default_sigma(height: int, width: int) -> float:
    """A twentieth of the larger side, at least one pixel."""
    return max(1.0, max(height, width) / 20)


def estimate(total: np.ndarray, count: int, sigma: float) -> np.ndarray:
    """The flat field (C, H, W) float32 from the sum of ``count`` images (C, H, W)."""
    mean = total / max(count, 1)
    smooth = gaussian_filter(mean, sigma=(0, sigma, sigma), mode="reflect")
    floor = np.percentile(smooth, ROBUST_PERCENTILE, axis=(1, 2))[:, None, None]
    flat = np.divide(smooth, floor, out=np.ones_like(smooth), where=floor > 0)
    return np.maximum(flat, 1.0).astype(np.float32)


def correct(image: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """``image`` (C, H, W) divided by ``flat``, rounded and clipped to its own dtype."""
    top = np.iinfo(image.dtype).max
    return np.clip(np.rint(image / flat), 0, top).astype(image.dtype)
