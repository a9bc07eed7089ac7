"""Typical variation normalisation (TVN), per EFAAR (ARCHITECTURE section 4).

On well embeddings X (n, D), with the control wells and a batch label (the experiment)
per well, in float64:

1. standard scaler fit on the control wells (mean, population sd), applied to all wells;
2. PCA fit on the scaled controls, all components (the D eigenvectors of their covariance),
   applied to all wells;
3. standard scaler fit on the PCA-projected controls, applied to all wells;
4. for each batch b: its wells are centred on the mean of b's controls and transformed by
   ``(Cov(controls_b) + 0.5 I)^(-1/2)`` (sample covariance, ddof 1, as ``np.cov``), the
   inverse square root taken by eigendecomposition.

Decisions:

- Centring in step 4 (``center=True``, the default): the whitening is applied to the
  batch's wells minus its control mean (CORAL-style alignment of centred data), so an
  additive batch offset goes with the batch's nuisance covariance and each batch's
  controls sit at the origin: cosines measure departure from the batch's own controls.
  EFAAR's ``tvn_on_controls`` (recursionpharma/EFAAR_benchmarking) multiplies the
  uncentred wells, leaving per-experiment offsets in the wells; ``center=False``
  reproduces it. On the genome world the two give the same recall (each gene has one
  well per experiment, so the offsets cancel in its mean) and KS 0.408 against 0.404.
- "All components" keeps all D directions, also when there are fewer controls than
  dimensions (sklearn's PCA would keep min(n, D) and one arbitrary null direction): no
  perturbation signal is dropped and the result is defined up to a rotation, which
  cosines do not see.
- A standard deviation counts as zero (and is replaced by 1, as sklearn's scaler does for
  constant features) when it is at most ``1e-6`` times the largest one of that step.
- The arithmetic: steps 1-3 are affine maps fitted on the controls, so they are composed
  into one and each well is multiplied once (per batch); all of it runs on one BLAS
  thread (``one_blas_thread``).
"""

from __future__ import annotations

import ctypes
import functools
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

RIDGE = 0.5  # the 0.5 I of ARCHITECTURE section 4
CONTROLS_PER_DIM = 2  # fewer control wells than this per dimension: reduce first (see tvn)
ZERO_SD = 1e-6  # relative to the step's largest sd


def _scaler(fit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population sd per column of ``fit``; sd ~ 0 becomes 1 (see module doc)."""
    mu = fit.mean(axis=0)
    sd = fit.std(axis=0)
    zero = sd <= ZERO_SD * sd.max() if sd.size and sd.max() > 0 else np.ones_like(sd, bool)
    return mu, np.where(zero, 1.0, sd)


@functools.cache
def _openblas():
    """(get, set) of the thread count of numpy's bundled OpenBLAS, or None."""
    libs = Path(np.__file__).parent.parent / "numpy.libs"
    for path in sorted(libs.glob("libscipy_openblas*.so*")):
        try:
            lib = ctypes.CDLL(str(path))  # already loaded by numpy: the same library
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""), ("openblas", "")):
            get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                return get, set_
    return None


@contextmanager
def one_blas_thread():
    """Run numpy's BLAS on one thread inside the block (no-op where it cannot be set).

    For TVN's small products and D x D decompositions: they gain little from threads, and
    when another process keeps a core busy each of their many multi-threaded BLAS calls
    waits for a descheduled thread. Measured on this project's 2-core machine with a busy
    neighbour: a 128 x 128 ``eigh`` took 216 ms against 1.4 ms on one thread, and TVN of
    the genome world 3-4.6 s against 0.15 s.
    """
    blas = _openblas()
    if blas is None:
        yield
        return
    get, set_ = blas
    before = get()
    set_(1)
    try:
        yield
    finally:
        set_(before)


def eig_psd(C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigendecomposition of a symmetric positive semi-definite matrix, eigenvalues in
    decreasing order: ``C = V diag(w) V.T``."""
    w, V = np.linalg.eigh(C)
    return w[::-1], V[:, ::-1]


def inverse_sqrt(C: np.ndarray) -> np.ndarray:
    """``C^(-1/2)`` of a symmetric positive definite matrix by eigendecomposition."""
    w, V = eig_psd(C)
    return (V * w**-0.5) @ V.T


def tvn(
    X: np.ndarray,
    is_control: np.ndarray,
    batch: np.ndarray,
    *,
    center: bool = True,
    ridge: float = RIDGE,
    controls_per_dim: float = CONTROLS_PER_DIM,
) -> np.ndarray:
    """TVN-corrected well embeddings (ARCHITECTURE section 4; steps in the module doc).

    X (n, D) well embeddings; is_control (n,) bool; batch (n,) labels (the experiment).
    Returns float32 (n, D) (or (n, k), below), rows in the same order. Raises ValueError when there are fewer
    than 2 control wells overall or in some batch (the batch is named). Runs on one BLAS
    thread (``one_blas_thread``): its products are small, and threads only risk stalls.

    Too few controls: the per-batch covariance of step 4 (and the scaler of step 3) fits
    the controls in-sample, so with few controls per dimension the whitened controls come
    out smaller and more mutually orthogonal than any other well drawn from the same
    distribution, and stop being a null for the rest. When the smallest batch has fewer
    than ``controls_per_dim * D`` control wells, X is first reduced to its top
    k = (smallest batch's controls) // controls_per_dim principal components (wells
    scaled on the controls as in step 1, PCA of all wells) and the result is (n, k).
    Whole-genome screens (hundreds of controls per experiment) never hit this; the tiny
    test world (16 controls per experiment, 95 hand-crafted features) does.
    """
    ctrl = np.asarray(is_control, dtype=bool)
    with one_blas_thread():
        if np.ndim(X) == 2 and len(ctrl) == len(X) and ctrl.any():
            per_batch = pd.Series(ctrl).groupby(np.asarray(batch)).sum()
            k = int(per_batch.min() // controls_per_dim)
            if 2 <= k < np.shape(X)[1]:
                X = top_components(X, ctrl, k)
        return _tvn(X, ctrl, batch, center, ridge)


def top_components(X: np.ndarray, is_control: np.ndarray, k: int) -> np.ndarray:
    """X (n, D) -> (n, k) float64: wells scaled on the controls (step 1's scaler), centred,
    on the top k principal axes of all wells."""
    X = np.asarray(X, dtype=np.float64)
    mu, sd = _scaler(X[is_control])
    Z = (X - mu) / sd
    Z = Z - Z.mean(axis=0)
    return Z @ eig_psd(Z.T @ Z)[1][:, :k]


def _tvn(X, is_control, batch, center: bool, ridge: float) -> np.ndarray:
    X = np.asarray(X)
    ctrl = np.asarray(is_control, dtype=bool)
    batch = np.asarray(batch)
    if X.ndim != 2 or ctrl.shape != (len(X),) or batch.shape != (len(X),):
        raise ValueError(
            f"tvn: X must be (n, D) with n is_control and batch labels, got X {X.shape}, "
            f"is_control {ctrl.shape}, batch {batch.shape}"
        )
    if ctrl.sum() < 2:
        raise ValueError(f"TVN needs at least 2 control wells, got {int(ctrl.sum())}")
    codes, labels = pd.factorize(batch)
    if (codes < 0).any():
        raise ValueError("TVN: some wells have no batch label")
    # Every step is affine and fitted on the controls alone, so steps 1-3 compose into one
    # map x -> x A + c and step 4 appends one matrix per batch: the wells are multiplied
    # once (the same arithmetic as applying the steps in turn, in another order).
    C = np.asarray(X[ctrl], dtype=np.float64)
    # 1. standard scaler on the controls
    mu1, sd1 = _scaler(C)
    C = (C - mu1) / sd1
    # 2. PCA on the scaled controls, all D components, by decreasing variance
    mu_p = C.mean(axis=0)
    C = C - mu_p
    V = eig_psd(C.T @ C / len(C))[1]
    C = C @ V
    # 3. standard scaler on the projected controls
    mu2, sd2 = _scaler(C)
    C = (C - mu2) / sd2
    A = (V / sd1[:, None]) / sd2  # diag(1/sd1) V diag(1/sd2)
    c = -((mu1 / sd1 + mu_p) @ V + mu2) / sd2
    # 4. per batch: (Cov(controls_b) + ridge I)^(-1/2), on the wells centred on b's controls
    out = np.empty(X.shape, dtype=np.float32)
    eye = np.eye(X.shape[1])
    ctrl_codes = codes[ctrl]
    for b, label in enumerate(labels):
        rows = codes == b
        cb = C[ctrl_codes == b]
        if len(cb) < 2:
            raise ValueError(f"TVN batch '{label}' has {len(cb)} control wells; need at least 2")
        m = cb.mean(axis=0)
        cov = (cb - m).T @ (cb - m) / (len(cb) - 1)
        W = inverse_sqrt(cov + ridge * eye)
        shift = (c - m) if center else c
        out[rows] = np.asarray(X[rows], dtype=np.float64) @ (A @ W) + shift @ W
    return out
