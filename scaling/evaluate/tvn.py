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

With ``shrink=False, folds=0`` that is EFAAR's TVN exactly (centred, below). The defaults
add two things for screens with few controls per dimension (next paragraph).

Few controls. Steps 2-4 fit covariances on the controls in-sample. With few controls per
dimension (the tiny world: 16 per experiment for 95 hand-crafted features) the smallest
sample eigenvalues are far below the true ones (Marchenko-Pastur), so step 3 blows up
directions that are noise for every other well, and the controls, whitened by their own
covariance, come out smaller and more mutually orthogonal than any other well from the
same distribution: they stop being a null. Two standard remedies, both on by default:

- ``shrink``: the covariances of steps 2-3 and 4 are Ledoit-Wolf estimates
  (``ledoit_wolf``: the sample covariance shrunk towards ``mean eigenvalue x I`` by the
  intensity that minimises the expected Frobenius error). The intensity vanishes as
  controls outnumber dimensions, so whole-genome screens get EFAAR's TVN to within noise.
- ``folds``: cross-fitting. Non-control wells are transformed by the fit on all
  controls; each control well by a fit on the other folds of the controls (``folds``
  folds per batch, by position), so every well, control or not, is corrected by a fit
  that did not see it, and the controls stay a null for the others (replicate
  consistency's control null, mAP's negatives). Batches with fewer than ``2 x folds``
  controls fall back to the in-sample fit.

Measured on embeddings-only worlds (scaling.world.genome, 4 experiments, seeds 0 and 1;
"null" = strength 0, where the share of perturbations significant at p < 0.01 should be
about 0.01): with 16 controls per experiment in 95 dimensions, EFAAR's TVN calls 0.38-0.44
of null perturbations significant, shrinkage alone 0.02-0.10, shrinkage with 2-fold
cross-fitting 0.00; complex recall with phenotypes 0.30-0.35 (EFAAR 0.23-0.27; the
earlier rule of reducing to ``controls // 2`` components, 0.11). With 42-64 controls in
128-256 dimensions: null share 0.01-0.02 (EFAAR 0.07-0.48), recall 0.46-0.53 (EFAAR
0.47-0.52, the reduction 0.44-0.48). With 96 controls in 64 dimensions all three agree
within 0.003 recall.

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
FOLDS = 2  # cross-fitting folds of the controls (module doc)
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


def ledoit_wolf(Xc: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf (2004) shrinkage covariance of centred rows Xc (n, D): (S*, rho).

    S = Xc.T Xc / n, mu = tr(S) / D; S* = (1 - rho) S + rho mu I with
    rho = min(b2, d2) / d2, d2 = |S - mu I|^2 / D and b2 = sum_k |x_k x_k.T - S|^2 / (n^2 D)
    (Frobenius norms; b2 computed as (sum_k |x_k|^4 / n - |S|^2) / (n D)).
    """
    n, D = Xc.shape
    S = Xc.T @ Xc / n
    mu = np.trace(S) / D
    d2 = (np.sum(S**2) - 2 * mu * np.trace(S) + D * mu**2) / D
    b2 = (np.sum(np.einsum("ij,ij->i", Xc, Xc) ** 2) / n - np.sum(S**2)) / (n * D)
    rho = 0.0 if d2 <= 0 else float(min(b2, d2) / d2)
    return (1 - rho) * S + rho * mu * np.eye(D), rho


def tvn(
    X: np.ndarray,
    is_control: np.ndarray,
    batch: np.ndarray,
    *,
    center: bool = True,
    ridge: float = RIDGE,
    shrink: bool = True,
    folds: int = FOLDS,
) -> np.ndarray:
    """TVN-corrected well embeddings (ARCHITECTURE section 4; steps in the module doc).

    X (n, D) well embeddings; is_control (n,) bool; batch (n,) labels (the experiment).
    Returns float32 (n, D), rows in the same order. ``shrink``: Ledoit-Wolf covariances;
    ``folds``: controls corrected by fits on the other folds (0: in-sample); both off is
    EFAAR's TVN. Raises ValueError when there are fewer than 2 control wells overall or
    in some batch (the batch is named). Runs on one BLAS thread (``one_blas_thread``).
    """
    X, ctrl, codes, labels = _inputs(X, is_control, batch)
    out = np.empty(X.shape, dtype=np.float32)
    with one_blas_thread():
        maps = _fit(X, ctrl, codes, labels, center, ridge, shrink)
        for b, (M, shift) in enumerate(maps):
            rows = codes == b
            out[rows] = np.asarray(X[rows], dtype=np.float64) @ M + shift
        per_batch = np.bincount(codes[ctrl], minlength=len(labels))
        if folds >= 2 and per_batch.min() >= 2 * folds:
            fold = np.zeros(len(X), dtype=np.int64)
            for b in range(len(labels)):
                rows = np.flatnonzero(ctrl & (codes == b))
                fold[rows] = np.arange(len(rows)) % folds
            for k in range(folds):
                maps = _fit(X, ctrl & (fold != k), codes, labels, center, ridge, shrink)
                for b, (M, shift) in enumerate(maps):
                    rows = ctrl & (fold == k) & (codes == b)
                    out[rows] = np.asarray(X[rows], dtype=np.float64) @ M + shift
    return out


def _inputs(X, is_control, batch):
    """Checked inputs: (X, ctrl bool (n,), batch codes (n,), batch labels)."""
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
    per_batch = np.bincount(codes[ctrl], minlength=len(labels))
    if per_batch.min() < 2:
        b = int(np.argmin(per_batch))
        raise ValueError(
            f"TVN batch '{labels[b]}' has {per_batch[b]} control wells; need at least 2"
        )
    return X, ctrl, codes, labels


def _cov(Cc: np.ndarray, shrink: bool) -> np.ndarray:
    """Covariance of centred rows, population (n) normalisation; Ledoit-Wolf if shrink."""
    return ledoit_wolf(Cc)[0] if shrink else Cc.T @ Cc / len(Cc)


def _fit(X, ctrl, codes, labels, center: bool, ridge: float, shrink: bool):
    """TVN fitted on the wells ``ctrl``: per batch b, (M_b (D, D), shift_b (D,)) with
    corrected wells = x M_b + shift_b. Every step is affine and fitted on the controls
    alone, so steps 1-3 compose into one map x -> x A + c and step 4 appends one matrix
    per batch: the wells are multiplied once. The result is rotated back from the
    principal axes to the axes of step 1 (``V.T``): cosines do not change, and fits on
    different controls (cross-fitting) land in the same coordinates, not in their own
    arbitrary principal bases."""
    C = np.asarray(X[ctrl], dtype=np.float64)
    # 1. standard scaler on the controls
    mu1, sd1 = _scaler(C)
    C = (C - mu1) / sd1
    # 2. PCA on the scaled controls, all D components, by decreasing variance
    mu_p = C.mean(axis=0)
    C = C - mu_p
    w, V = eig_psd(_cov(C, shrink))
    C = C @ V
    # 3. standard scaler on the projected controls (sd = sqrt of the eigenvalues)
    sd2 = np.sqrt(np.maximum(w, 0.0))
    sd2 = np.where(sd2 <= ZERO_SD * sd2.max(), 1.0, sd2) if sd2.max() > 0 else np.ones_like(sd2)
    C = C / sd2
    A = (V / sd1[:, None]) / sd2  # diag(1/sd1) V diag(1/sd2)
    c = -((mu1 / sd1 + mu_p) @ V) / sd2
    # 4. per batch: (Cov(controls_b) + ridge I)^(-1/2), on the wells centred on b's controls
    eye = np.eye(X.shape[1])
    ctrl_codes = codes[ctrl]
    maps = []
    for b in range(len(labels)):
        cb = C[ctrl_codes == b]
        m = cb.mean(axis=0)
        cov = _cov(cb - m, shrink) * (len(cb) / (len(cb) - 1))  # ddof 1, as np.cov
        W = inverse_sqrt(cov + ridge * eye) @ V.T  # back to the scaled features' axes
        maps.append((A @ W, ((c - m) if center else c) @ W))
    return maps
