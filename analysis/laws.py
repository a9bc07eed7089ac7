"""Scaling-law math (ARCHITECTURE section 4, "Scaling laws"): pure numpy/scipy.

- Loss law L(N, D) = E + A / N^alpha + B / D^beta, fitted as Chinchilla's approach 3 in
  Epoch AI's replication: Huber loss (delta 1e-3) on log L with the log-sum-exp form,
  L-BFGS-B from a grid of starts, bootstrap over runs for 95% percentile intervals.
- Compute-optimal allocation N_opt(C), D_opt(C) under C = k N D.
- Metric laws against training compute C (FLOPs): linear in log10 C and the saturating
  power law m(C) = m_inf - k C^(-gamma), each with bootstrap intervals over runs.
- Held-out error (fit without the largest-compute runs, predict them), the frontier
  (best value reached at each compute) and the curation effective-compute multiplier.

Units: N = encoder parameters, D = crops seen, C = training FLOPs, L = validation
reconstruction loss; every array argument is a 1-D float array of shape (n_runs,).
Under-determined or invalid input raises ``scaling.errors.InputError``.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from scaling.errors import InputError

HUBER_DELTA = 1e-3
CI_LEVEL = 0.95
MIN_LOSS_RUNS = 6  # more runs than the loss law's 5 parameters
MIN_LINEAR_RUNS, MIN_LINEAR_COMPUTES = 3, 2
MIN_SATURATING_RUNS, MIN_SATURATING_COMPUTES = 5, 3
HOLDOUT_FRACTION = 0.2  # held-out runs: top 20% of the log10-compute range

# Epoch AI's grid of starts (a, b, e, alpha, beta); all of it is screened by objective
# value and L-BFGS-B runs from the best few (section 4: "L-BFGS from a grid of starts").
_GRID_A = np.arange(0.0, 30.0, 5.0)
_GRID_E = np.arange(-1.0, 1.5, 0.5)
_GRID_EXP = np.arange(0.0, 2.5, 0.5)
_GRID = np.array(list(itertools.product(_GRID_A, _GRID_A, _GRID_E, _GRID_EXP, _GRID_EXP)))
_POINT_STARTS = 16  # L-BFGS-B runs for a point estimate
_BOOT_STARTS = 1  # grid starts per bootstrap resample, besides the point estimate
# Loose box for L-BFGS-B on (a', b', e, alpha, beta) (a', b' centred, see _lbfgs_best):
# keeps exp() finite and the exponents non-negative.
_BOUNDS = [(-100.0, 100.0), (-100.0, 100.0), (-20.0, 20.0), (0.0, 5.0), (0.0, 5.0)]


# ----------------------------------------------------------------------------- checks


def check_positive(name: str, values) -> np.ndarray:
    """``values`` as a 1-D float array; InputError naming ``name`` (the column) if any
    entry is non-finite or <= 0."""
    arr = np.asarray(values, dtype=float).reshape(-1)
    bad = ~np.isfinite(arr) | (arr <= 0)
    if bad.any():
        raise InputError(
            f"{name}: {int(bad.sum())} of {arr.size} values are non-finite or <= 0 "
            f"(first bad: {arr[bad][0]!r})"
        )
    return arr


def check_finite(name: str, values) -> np.ndarray:
    """``values`` as a 1-D float array; InputError naming ``name`` if any is non-finite."""
    arr = np.asarray(values, dtype=float).reshape(-1)
    if not np.isfinite(arr).all():
        raise InputError(f"{name}: {int((~np.isfinite(arr)).sum())} values are non-finite")
    return arr


def _same_length(**arrays: np.ndarray) -> None:
    sizes = {k: v.size for k, v in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise InputError(f"arrays differ in length: {sizes}")


def _n_distinct_rows(x: np.ndarray) -> np.ndarray:
    """Distinct values in each row of x (B, n) up to float noise (relative 1e-9, or
    absolute 1e-9 below 1); shape (B,)."""
    s = np.sort(x, axis=1)
    tol = 1e-9 * np.maximum(np.abs(s[:, 1:]), 1.0)
    return 1 + (np.diff(s, axis=1) > tol).sum(axis=1)


def _n_distinct(x: np.ndarray) -> int:
    """Distinct values of x (n,) up to float noise, as ``_n_distinct_rows``."""
    return int(_n_distinct_rows(x[None, :])[0]) if x.size else 0


def _resamples(n: int, n_boot: int, seed) -> np.ndarray:
    """Seeded bootstrap index sets, shape (n_boot, n): rows resampled with replacement."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_boot, n))


def percentile_ci(samples, level: float = CI_LEVEL) -> list[float] | None:
    """[lo, hi] percentile interval of the finite ``samples`` (shape (n,)); None if none."""
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return None
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(s, [tail, 100.0 - tail])
    return [float(lo), float(hi)]


# ---------------------------------------------------------------------------- loss law


@dataclass(frozen=True)
class LossLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta (section 4)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def __call__(self, N, D) -> np.ndarray:
        """Predicted loss for parameters N and crops D (broadcasting arrays)."""
        N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
        return self.E + self.A / N**self.alpha + self.B / D**self.beta

    @classmethod
    def from_theta(cls, theta: Sequence[float]) -> LossLaw:
        """From the fitted vector (a, b, e, alpha, beta), A = exp(a), B = exp(b), E = exp(e)."""
        a, b, e, alpha, beta = (float(t) for t in theta)
        return cls(E=np.exp(e), A=np.exp(a), B=np.exp(b), alpha=alpha, beta=beta)

    def as_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in ("E", "A", "B", "alpha", "beta")}


def _lse_terms(theta: np.ndarray, logN: np.ndarray, logD: np.ndarray):
    """Log-sum-exp prediction of log L for many parameter vectors at once.

    theta: (g, 5) rows of (a, b, e, alpha, beta); logN, logD: (n,). Returns (g, n).
    """
    a, b, e, alpha, beta = (theta[:, i, None] for i in range(5))
    t1, t2 = a - alpha * logN, b - beta * logD
    top = np.maximum(np.maximum(t1, t2), e)
    return top + np.log(np.exp(t1 - top) + np.exp(t2 - top) + np.exp(e - top))


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Huber loss elementwise, as ``scipy.special.huber(delta, r)``."""
    g = np.minimum(np.maximum(r, -delta), delta)  # d Huber / d r
    return g * (r - 0.5 * g)


def _loss_objective(theta, logN, logD, logL, delta=HUBER_DELTA):
    """Sum over runs of Huber(delta) of LSE(a - alpha logN, b - beta logD, e) - log L,
    and its analytic gradient, shape (5,). Both are divided by delta, which leaves the
    minimiser unchanged and puts the objective on a scale that suits L-BFGS-B's
    tolerances. theta = (a, b, e, alpha, beta); logN, logD, logL: shape (n,)."""
    a, b, e, alpha, beta = theta
    t1, t2 = a - alpha * logN, b - beta * logD
    top = np.maximum(np.maximum(t1, t2), e)
    w1, w2, w3 = np.exp(t1 - top), np.exp(t2 - top), np.exp(e - top)
    total = w1 + w2 + w3
    r = top + np.log(total) - logL
    g = np.minimum(np.maximum(r, -delta), delta)  # d Huber / d r
    f = float(g @ (r - 0.5 * g))
    gs = g / total  # times the softmax weights w_i / total: d pred / d term_i
    p1, p2 = gs * w1, gs * w2
    grad = np.array([p1.sum(), p2.sum(), gs @ w3, -(p1 @ logN), -(p2 @ logD)])
    return f / delta, grad / delta


@functools.cache
def _openblas_thread_controls() -> tuple:
    """(get, set) thread-count functions of every OpenBLAS loaded in this process, found
    through /proc/self/maps (Linux); empty elsewhere or when none answers."""
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "openblas" in line.lower()}
    except OSError:
        return ()
    controls = []
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in itertools.product(("scipy_openblas", "openblas"), ("", "64_")):
            get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                get.restype, put.argtypes = ctypes.c_int, [ctypes.c_int]
                controls.append((get, put))
                break
    return tuple(controls)


@contextmanager
def _single_thread_blas() -> Iterator[None]:
    """Run the block with OpenBLAS on one thread. L-BFGS-B calls BLAS on tiny (5-wide)
    problems; a multi-threaded OpenBLAS wakes its thread pool on every call, which made
    each fit about 10x slower on a busy machine."""
    saved = [(put, get()) for get, put in _openblas_thread_controls()]
    for put, _ in saved:
        put(1)
    try:
        yield
    finally:
        for put, n in saved:
            put(n)


def _screen_grid(logN, logD, logL, count: int) -> np.ndarray:
    """The ``count`` grid starts with the lowest objective, shape (count, 5)."""
    obj = _huber(_lse_terms(_GRID, logN, logD) - logL, HUBER_DELTA).sum(axis=1)
    return _GRID[np.argsort(obj, kind="stable")[:count]]


def _lbfgs_best(starts: np.ndarray, logN, logD, logL) -> np.ndarray:
    """Run L-BFGS-B from every start (shape (k, 5)); the best end point, shape (5,).

    The optimiser works in centred coordinates, a' = a - alpha mean(logN) and
    b' = b - beta mean(logD), a linear change of variables that leaves the objective
    and its minimiser unchanged but decorrelates a from alpha (and b from beta), which
    cuts the iterations by about a third.
    """
    mN, mD = logN.mean(), logD.mean()
    shift = np.array([[1, 0, 0, mN, 0], [0, 1, 0, 0, mD]], dtype=float)
    best_x, best_f = None, np.inf
    with _single_thread_blas():
        for x0 in starts:
            y0 = x0.copy()
            y0[:2] -= shift[:, 3:] @ x0[3:]
            res = minimize(
                _loss_objective,
                y0,
                args=(logN - mN, logD - mD, logL),
                jac=True,
                method="L-BFGS-B",
                bounds=_BOUNDS,
                options={"maxiter": 2000, "ftol": 1e-12, "gtol": 1e-9},
            )
            if np.isfinite(res.fun) and res.fun < best_f:
                best_x, best_f = res.x.copy(), res.fun
    if best_x is None:
        raise InputError("loss law: L-BFGS-B found no finite optimum from any start")
    best_x[:2] += shift[:, 3:] @ best_x[3:]
    return best_x


def check_loss_inputs(N, D, L) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate the loss-law data; InputError when invalid or under-determined
    (needs >= 6 runs, >= 2 distinct sizes N and >= 2 distinct data sizes D)."""
    N = check_positive("params (N)", N)
    D = check_positive("crops_seen (D)", D)
    L = check_positive("loss (L)", L)
    _same_length(N=N, D=D, L=L)
    if N.size < MIN_LOSS_RUNS:
        raise InputError(
            f"loss law: {N.size} runs, needs at least {MIN_LOSS_RUNS} (more than its 5 parameters)"
        )
    if _n_distinct(N) < 2:
        raise InputError("loss law: needs at least 2 distinct model sizes (params N)")
    if _n_distinct(D) < 2:
        raise InputError("loss law: needs at least 2 distinct data sizes (crops_seen D)")
    return N, D, L


def loss_law_fittable(N, D) -> bool:
    """Whether (N, D) (shape (n_runs,)) has enough runs and distinct N, D for the loss law."""
    return N.size >= MIN_LOSS_RUNS and _n_distinct(N) >= 2 and _n_distinct(D) >= 2


def _fit_loss_theta(N, D, L, starts: np.ndarray) -> np.ndarray:
    """Best (a, b, e, alpha, beta) over L-BFGS-B runs from ``starts`` (k, 5)."""
    return _lbfgs_best(starts, np.log(N), np.log(D), np.log(L))


def fit_loss_law(N, D, L) -> LossLaw:
    """Fit the loss law (section 4, Chinchilla approach 3 as Epoch AI replicated it).

    N, D, L: shape (n_runs,), positive. Evaluates the objective at every point of Epoch
    AI's grid of starts (6 x 6 x 5 x 5 x 5), runs L-BFGS-B from the best
    ``_POINT_STARTS`` of them and keeps the lowest objective.
    """
    N, D, L = check_loss_inputs(N, D, L)
    starts = _screen_grid(np.log(N), np.log(D), np.log(L), _POINT_STARTS)
    return LossLaw.from_theta(_fit_loss_theta(N, D, L, starts))


def bootstrap_loss_law(N, D, L, point: LossLaw, n_boot: int = 200, seed=0) -> np.ndarray:
    """Refit the loss law on ``n_boot`` resamples of the runs (with replacement, seeded).

    Each resample starts L-BFGS-B from ``point`` and from the ``_BOOT_STARTS`` best grid
    starts of the full data (screening the grid once, not per resample, keeps the
    bootstrap at about 10 ms a resample); resamples with < 2 distinct N or D are skipped.
    Returns the fitted (E, A, B, alpha, beta) of each kept resample, shape (n_kept, 5).
    """
    N, D, L = check_loss_inputs(N, D, L)
    warm = np.array([np.log(point.A), np.log(point.B), np.log(point.E), point.alpha, point.beta])
    grid = _screen_grid(np.log(N), np.log(D), np.log(L), _BOOT_STARTS)
    starts = np.vstack([warm[None, :], grid])
    rows = []
    for idx in _resamples(N.size, n_boot, seed):
        if not loss_law_fittable(N[idx], D[idx]):
            continue
        law = LossLaw.from_theta(_fit_loss_theta(N[idx], D[idx], L[idx], starts))
        rows.append([law.E, law.A, law.B, law.alpha, law.beta])
    return np.asarray(rows, dtype=float).reshape(-1, 5)


def loss_law_ci(samples: np.ndarray) -> dict[str, list[float] | None]:
    """95% percentile intervals of E, A, B, alpha, beta from bootstrap ``samples`` (n, 5)."""
    return {k: percentile_ci(samples[:, i]) for i, k in enumerate(("E", "A", "B", "alpha", "beta"))}


# ------------------------------------------------------------------ compute-optimal


def fit_k(N, D, C) -> float:
    """k in C = k N D: the median over runs of flops / (N D) (FLOPs per parameter-crop)."""
    N = check_positive("params (N)", N)
    D = check_positive("crops_seen (D)", D)
    C = check_positive("flops (C)", C)
    _same_length(N=N, D=D, C=C)
    return float(np.median(C / (N * D)))


def compute_optimal_exponents(alpha: float, beta: float) -> tuple[float, float]:
    """(n_exponent, d_exponent) = (beta, alpha) / (alpha + beta): N_opt ∝ C^n_exponent,
    D_opt ∝ C^d_exponent when minimising L at fixed C = k N D."""
    s = alpha + beta
    if not np.isfinite(s) or s <= 0:
        return float("nan"), float("nan")
    return float(beta / s), float(alpha / s)


def n_opt_d_opt(C, law: LossLaw, k: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form compute-optimal N_opt(C) and D_opt(C) under C = k N D.

    Setting dL/dN = 0 along D = C / (k N) gives alpha A N^-alpha = beta B D^-beta, so
    N_opt = G (C/k)^(beta/(alpha+beta)) and D_opt = (C/k) / N_opt
          = G^-1 (C/k)^(alpha/(alpha+beta)),  with G = (alpha A / (beta B))^(1/(alpha+beta)).
    C: FLOPs, scalar or array; returns arrays of the same shape (parameters, crops).
    """
    C = np.asarray(C, dtype=float)
    a, b = law.alpha, law.beta
    if not (a > 0 and b > 0 and k > 0):
        raise InputError(f"compute-optimal: needs alpha, beta, k > 0 (got {a}, {b}, {k})")
    n_exp, _ = compute_optimal_exponents(a, b)
    G = (a * law.A / (b * law.B)) ** (1.0 / (a + b))
    n_opt = G * (C / k) ** n_exp
    return n_opt, (C / k) / n_opt


# ----------------------------------------------------------------------- metric laws


def _log10_compute(C) -> np.ndarray:
    return np.log10(check_positive("flops (C)", C))


@dataclass(frozen=True)
class LinearLaw:
    """m = intercept + slope * log10(C) (section 4, "linear, as in the paper")."""

    intercept: float
    slope: float

    def __call__(self, C) -> np.ndarray:
        return self.intercept + self.slope * np.log10(np.asarray(C, dtype=float))


def _check_metric_inputs(law: str, C, m, runs: int, computes: int):
    """Validate (C, m) for a metric law needing ``runs`` runs at ``computes`` distinct
    computes. Returns (log10 C, m), shape (n_runs,) each."""
    x, m = _log10_compute(C), check_finite("metric value", m)
    _same_length(C=x, m=m)
    if x.size < runs or _n_distinct(x) < computes:
        raise InputError(
            f"{law} law: {x.size} runs at {_n_distinct(x)} distinct computes, needs at least "
            f"{runs} runs at {computes} distinct computes"
        )
    return x, m


def check_linear_inputs(C, m) -> tuple[np.ndarray, np.ndarray]:
    """Validate (C, m) for the linear law: >= 3 runs at >= 2 distinct computes."""
    return _check_metric_inputs("linear", C, m, MIN_LINEAR_RUNS, MIN_LINEAR_COMPUTES)


def _linear_batch(x: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares (intercept, slope) of m = intercept + slope x for each row of
    x, m (B, n); shapes (B,). Rows with a single distinct x give NaN."""
    xm, mm = x.mean(axis=1, keepdims=True), m.mean(axis=1, keepdims=True)
    xc = x - xm
    sxx = (xc * xc).sum(axis=1)
    ok = _n_distinct_rows(x) >= MIN_LINEAR_COMPUTES
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(ok, (xc * (m - mm)).sum(axis=1) / sxx, np.nan)
    return mm[:, 0] - slope * xm[:, 0], slope


def fit_linear(C, m) -> LinearLaw:
    """Least-squares fit of m = intercept + slope log10 C; C (FLOPs), m: shape (n_runs,)."""
    x, m = check_linear_inputs(C, m)
    intercept, slope = _linear_batch(x[None, :], m[None, :])
    return LinearLaw(float(intercept[0]), float(slope[0]))


def linear_samples(C, m, n_boot: int = 200, seed=0) -> np.ndarray:
    """Bootstrap (intercept, slope) of the linear law over ``n_boot`` seeded resamples
    of the runs, shape (n_kept, 2); resamples at a single compute are dropped."""
    x, m = check_linear_inputs(C, m)
    idx = _resamples(x.size, n_boot, seed)
    intercept, slope = _linear_batch(x[idx], m[idx])
    keep = np.isfinite(slope)
    return np.column_stack([intercept[keep], slope[keep]])


def predict_linear(C, law: LinearLaw, samples: np.ndarray):
    """Point prediction of the linear law at compute C (scalar FLOPs) and its 95%
    percentile interval over bootstrap ``samples`` (n, 2) of (intercept, slope)."""
    x = np.log10(float(C))
    draws = samples[:, 0] + samples[:, 1] * x if samples.size else np.array([])
    return float(law.intercept + law.slope * x), percentile_ci(draws)


@dataclass(frozen=True)
class SaturatingLaw:
    """m(C) = m_inf - k C^(-gamma) (section 4), gamma > 0, k > 0.

    Fitted as m = m_inf - gap * 10^(-gamma (log10 C - x_center)) with x_center the mean
    log10 compute of the fit's runs, so ``gap`` = k C_center^(-gamma) is the distance to
    m_inf at the centre compute; k = gap * 10^(gamma x_center) may be huge for large C.
    """

    m_inf: float
    gap: float
    gamma: float
    x_center: float

    @property
    def k(self) -> float:
        with np.errstate(over="ignore"):
            return float(self.gap * 10.0 ** (self.gamma * self.x_center))

    def __call__(self, C) -> np.ndarray:
        x = np.log10(np.asarray(C, dtype=float))
        return self.m_inf - self.gap * 10.0 ** (-self.gamma * (x - self.x_center))


GAMMA_LO, GAMMA_HI = 1e-3, 5.0  # search range of gamma (at a bound: not identified)
_GAMMA_GRID, _GAMMA_ZOOM, _GAMMA_ZOOMS = 80, 17, 4  # log grid, then 4 zooms of 17 points


def _profile(gamma: np.ndarray, x: np.ndarray, m: np.ndarray):
    """Variable projection of the saturating law: for fixed gamma it is linear in
    (m_inf, gap), m = m_inf - gap z with z = 10^(-gamma x).

    gamma: (B, G) candidate exponents; x: (B, n) centred log10 C; m: (B, n).
    Returns the least-squares m_inf, gap and residual sum of squares, each (B, G);
    gap is clipped at 0 (a flat law) where the data fall with compute.
    """
    z = 10.0 ** (-gamma[:, :, None] * x[:, None, :])
    zm = z.mean(axis=2)
    zc = z - zm[:, :, None]
    mm = m.mean(axis=1)
    szz = (zc * zc).sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = -(zc * (m - mm[:, None])[:, None, :]).sum(axis=2) / szz
    gap = np.where(np.isfinite(gap) & (gap > 0), gap, 0.0)
    m_inf = mm[:, None] + gap * zm
    sse = ((m_inf[:, :, None] - gap[:, :, None] * z - m[:, None, :]) ** 2).sum(axis=2)
    return m_inf, gap, sse


def _saturating_batch(x: np.ndarray, m: np.ndarray):
    """Fit the saturating law to each row of x (B, n) (log10 C) and m (B, n).

    The residual is profiled over a log grid of gamma in [1e-3, 5], then the grid is
    zoomed around the best point (each zoom narrows the step 8x). Returns m_inf, gap,
    gamma and x_center, each (B,); gap <= 0 marks a row whose metric does not rise.
    """
    xc = x.mean(axis=1)
    x = x - xc[:, None]
    lo = np.full(x.shape[0], np.log(GAMMA_LO))
    hi = np.full(x.shape[0], np.log(GAMMA_HI))
    size = _GAMMA_GRID
    rows = np.arange(x.shape[0])
    for _ in range(_GAMMA_ZOOMS + 1):
        grid = lo[:, None] + (hi - lo)[:, None] * np.linspace(0.0, 1.0, size)[None, :]
        _, _, sse = _profile(np.exp(grid), x, m)
        i = np.argmin(sse, axis=1)
        lo = grid[rows, np.maximum(i - 1, 0)]
        hi = grid[rows, np.minimum(i + 1, size - 1)]
        best = grid[rows, i]
        size = _GAMMA_ZOOM
    gamma = np.exp(best)
    m_inf, gap, _ = _profile(gamma[:, None], x, m)
    return m_inf[:, 0], gap[:, 0], gamma, xc


def check_saturating_inputs(C, m) -> tuple[np.ndarray, np.ndarray]:
    """Validate (C, m) for the saturating law: >= 5 runs at >= 3 distinct computes."""
    return _check_metric_inputs("saturating", C, m, MIN_SATURATING_RUNS, MIN_SATURATING_COMPUTES)


def fit_saturating(C, m) -> SaturatingLaw:
    """Least-squares fit of m(C) = m_inf - k C^(-gamma), gamma in [1e-3, 5], k > 0, by
    variable projection over log10 C centred (see ``_saturating_batch``).
    C (FLOPs), m: shape (n_runs,). InputError when under-determined or when the metric
    does not rise with compute."""
    x, m = check_saturating_inputs(C, m)
    m_inf, gap, gamma, xc = _saturating_batch(x[None, :], m[None, :])
    if not gap[0] > 0:
        raise InputError("saturating law: the metric does not rise with compute")
    return SaturatingLaw(float(m_inf[0]), float(gap[0]), float(gamma[0]), float(xc[0]))


def saturating_samples(C, m, n_boot: int = 200, seed=0) -> np.ndarray:
    """Bootstrap (m_inf, k, gamma) of the saturating law over ``n_boot`` seeded
    resamples of the runs, shape (n_kept, 3); resamples at < 3 distinct computes or
    where the metric does not rise are dropped."""
    x, m = check_saturating_inputs(C, m)
    idx = _resamples(x.size, n_boot, seed)
    idx = idx[_n_distinct_rows(x[idx]) >= MIN_SATURATING_COMPUTES]
    out = np.empty((0, 3))
    if idx.shape[0]:
        m_inf, gap, gamma, xc = _saturating_batch(x[idx], m[idx])
        with np.errstate(over="ignore"):
            k = gap * 10.0 ** (gamma * xc)
        keep = gap > 0
        out = np.column_stack([m_inf[keep], k[keep], gamma[keep]])
    return out


# -------------------------------------------------------------- held-out, frontier


def holdout_mask(C, can_fit: Callable[[np.ndarray], bool]) -> np.ndarray | None:
    """Which runs to hold out (bool mask, shape (n_runs,)), or None when no hold-out
    leaves a fittable training set.

    First choice: the runs whose log10 C lies in the top ``HOLDOUT_FRACTION`` of the
    log-compute range (always at least the largest-compute runs). If the rest cannot be
    fitted (``can_fit(train_mask)`` is False), fall back to only the runs at the highest
    distinct compute.
    """
    x = _log10_compute(C)
    top = x.max()
    cut = top - HOLDOUT_FRACTION * (top - x.min())
    for held in (x >= cut - 1e-12, x >= top - 1e-9 * max(abs(top), 1.0)):
        if held.any() and (~held).any() and can_fit(~held):
            return held
    return None


def frontier(C, values, ids, higher_is_better: bool = True) -> list[list]:
    """Best value reached at each compute (section 4): for each distinct compute c of
    the runs, the best value over all runs with compute <= c and the run holding it
    (on a tie, the earlier one in order of compute, then id).

    C, values, ids: shape (n_runs,); runs with a non-finite value or compute are dropped.
    Returns [[c, best value, run id], ...] with c ascending, one entry per distinct c.
    """
    C = np.asarray(C, dtype=float)
    v = np.asarray(values, dtype=float)
    ids = np.asarray(ids).astype(str)
    keep = np.isfinite(v) & np.isfinite(C)
    C, v, ids = C[keep], v[keep], ids[keep]
    sign = 1.0 if higher_is_better else -1.0
    out: list[list] = []
    best, best_id = -np.inf, None
    for k in np.lexsort((ids, C)):
        if sign * v[k] > best:
            best, best_id = sign * v[k], ids[k]
        entry = [float(C[k]), float(sign * best), str(best_id)]
        if out and out[-1][0] == entry[0]:
            out[-1] = entry  # same compute: keep the best over all its runs
        else:
            out.append(entry)
    return out


# ------------------------------------------------------------- curation multiplier


def effective_compute_multiplier(ref: LinearLaw, other: LinearLaw, C: float) -> float:
    """How many times more compute the ``other`` curation needs to reach the ``ref``
    curation's metric at compute C (FLOPs), from the two linear laws:
    10 ** ((a_ref + s_ref x - a_other) / s_other - x), x = log10 C.
    NaN when either slope is <= 0 or undefined: a curation whose metric does not rise
    with compute has no compute equivalent."""
    if not all(np.isfinite(s) and s > 0 for s in (ref.slope, other.slope)):
        return float("nan")
    x = np.log10(C)
    with np.errstate(over="ignore"):
        return float(10.0 ** ((ref.intercept + ref.slope * x - other.intercept) / other.slope - x))


def multiplier_samples(ref: tuple, other: tuple, C: float, n_boot: int = 200, seed=0):
    """Bootstrap the effective-compute multiplier at compute C: resample the runs
    within each curation (``ref`` and ``other`` are (C, m) pairs of shape (n_runs,)),
    refit both linear laws, and evaluate ``effective_compute_multiplier``. Resamples at
    a single compute or with a slope <= 0 are dropped. Returns shape (n_kept,)."""
    xr, mr = check_linear_inputs(*ref)
    xo, mo = check_linear_inputs(*other)
    rng = np.random.default_rng(seed)
    ir = rng.integers(0, xr.size, size=(n_boot, xr.size))
    io = rng.integers(0, xo.size, size=(n_boot, xo.size))
    ar, sr = _linear_batch(xr[ir], mr[ir])
    ao, so = _linear_batch(xo[io], mo[io])
    x = np.log10(C)
    keep = np.isfinite(sr) & np.isfinite(so) & (sr > 0) & (so > 0)
    with np.errstate(over="ignore"):
        return 10.0 ** ((ar[keep] + sr[keep] * x - ao[keep]) / so[keep] - x)
