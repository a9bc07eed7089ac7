"""Scaling-law math (ARCHITECTURE section 4, "Scaling laws"): pure numpy/scipy.

- Loss law L(N, D) = E + A / N^alpha + B / D^beta, fitted as Chinchilla's approach 3 in
  Epoch AI's replication: Huber loss (delta 1e-3) on log L with the log-sum-exp form,
  L-BFGS-B from a grid of starts, bootstrap over runs for 95% percentile intervals.
- Compute-optimal allocation N_opt(C), D_opt(C) under C = k N D.
- IsoFLOP profiles (Chinchilla's approach 2): at each shared compute budget, a parabola
  of loss against log10 N; its vertex is that budget's N*(C), and N* ∝ C^a across budgets.
- Metric laws against training compute C (FLOPs): linear in log10 C and the saturating
  power law m(C) = m_inf - k C^(-gamma), each with bootstrap intervals over runs.
- Held-out error (fit without the largest-compute runs, predict them), the frontier
  (best value reached at each compute) and the curation effective-compute multiplier.

Trunk-clustered bootstrap (section 4): runs that share a warm-up/stable/decay trunk are
not independent, so every bootstrap here resamples trunks (``groups``: one label a run),
all runs of a drawn trunk together, through ``cluster_resamples``; with no groups every
run is its own trunk. A parameter whose estimate or interval touches its search bound is
"not determined" (``bound_reason``), never a finding.

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
BOUND_RTOL = 1e-3  # "touches a bound": within this share of the search range of it
BUDGET_RTOL = 0.05  # runs whose FLOPs lie within 5% of each other share a budget
# ... and so count as one compute where a metric law needs distinct computes (log10 C)
COMPUTE_TOL = float(np.log10(1 + BUDGET_RTOL))
MIN_ISOFLOP_SIZES = 3  # distinct model sizes a budget needs for its parabola
# a budget's N* is determined only when its vertex is an interior minimum in this share of
# the resamples: else its 95% interval touches the edge of the trained sizes (section 4)
CI_LEVEL_KEPT = 1.0 - (1.0 - CI_LEVEL) / 2

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


def _n_distinct_rows(x: np.ndarray, tol: float | None = None) -> np.ndarray:
    """Distinct values in each row of x (B, n): sorted neighbours more than ``tol`` apart
    (default: float noise, relative 1e-9 or absolute 1e-9 below 1); shape (B,)."""
    s = np.sort(x, axis=1)
    if tol is None:
        tol = 1e-9 * np.maximum(np.abs(s[:, 1:]), 1.0)
    return 1 + (np.diff(s, axis=1) > tol).sum(axis=1)


def _n_distinct(x: np.ndarray, tol: float | None = None) -> int:
    """Distinct values of x (n,), as ``_n_distinct_rows``."""
    return int(_n_distinct_rows(x[None, :], tol)[0]) if x.size else 0


def _n_distinct_drawn(x: np.ndarray, w: np.ndarray, tol: float | None = None) -> np.ndarray:
    """Distinct values of x (n,) or (B, n) among the runs drawn in each row of the counts
    w (B, n) (``cluster_resamples``), as ``_n_distinct_rows``; shape (B,)."""
    return _n_distinct_rows(np.where(w > 0, x, np.nan), tol)


def check_groups(groups, n: int) -> np.ndarray:
    """Bootstrap cluster labels, shape (n,): ``groups`` as an array, or every run its own
    cluster (0..n-1) when None; InputError when the length is not n."""
    if groups is None:
        return np.arange(n)
    labels = np.asarray(groups).reshape(-1)
    if labels.size != n:
        raise InputError(f"groups: {labels.size} labels for {n} runs")
    return labels


def cluster_resamples(groups, n_boot: int, seed) -> np.ndarray:
    """Trunk-clustered bootstrap (section 4): ``n_boot`` seeded resamples, each drawing as
    many clusters as there are, with replacement, and taking every run of each drawn
    cluster. groups: (n,) labels, one a run (clusters numbered by first appearance).
    Returns the counts, shape (n_boot, n): how often each run is drawn in each resample.

    With every run its own cluster this is the plain run bootstrap: the draws are
    ``rng.integers(0, n, (n_boot, n))``. ``seed`` may be a numpy Generator, which is then
    advanced (two calls on one Generator give independent resamples).
    """
    _, first, inverse = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=int)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    codes = rank[inverse.reshape(-1)]
    draws = np.random.default_rng(seed).integers(0, first.size, size=(n_boot, first.size))
    counts = np.zeros((n_boot, first.size), dtype=int)
    np.add.at(counts, (np.arange(n_boot)[:, None], draws), 1)
    return counts[:, codes]


def drawn_indices(counts: np.ndarray) -> np.ndarray:
    """Run indices of one resample from its counts (n,): run i repeated counts[i] times."""
    return np.repeat(np.arange(counts.size), counts)


def _weighted_mean(v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mean of v (n,) or (B, n) over each row of the counts w (B, n); shape (B,), NaN
    for a row that draws nothing."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w * v).sum(axis=1) / w.sum(axis=1)


def percentile_ci(samples, level: float = CI_LEVEL) -> list[float] | None:
    """[lo, hi] percentile interval of the finite ``samples`` (shape (n,)); None if none."""
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return None
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(s, [tail, 100.0 - tail])
    return [float(lo), float(hi)]


def bound_reason(name: str, value, interval, bounds, log: bool = False) -> str | None:
    """Why parameter ``name`` is not determined, in one line, or None when it is: its
    point ``value`` or an end of its 95% ``interval`` ([lo, hi] or None) lies within
    ``BOUND_RTOL`` of the search range ``bounds`` = (lo, hi) of a bound (measured on
    log values when the search runs in log space, ``log``)."""
    f = np.log if log else float
    tol = BOUND_RTOL * (f(bounds[1]) - f(bounds[0]))
    ends = [float(value), *(interval or [])]
    near = [b for b in bounds if any(abs(f(v) - f(b)) <= tol for v in ends)]
    if not near:
        return None
    ci = f" (95% CI {interval[0]:.3g} to {interval[1]:.3g})" if interval else ""
    return (
        f"{name} = {float(value):.3g}{ci} touches its search bound {near[0]:g} "
        f"of [{bounds[0]:g}, {bounds[1]:g}]"
    )


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


def bootstrap_loss_law(
    N, D, L, point: LossLaw, n_boot: int = 200, seed=0, groups=None
) -> np.ndarray:
    """Refit the loss law on ``n_boot`` seeded trunk-clustered resamples of the runs
    (``cluster_resamples``; groups: (n_runs,) trunk labels, None: every run alone).

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
    for counts in cluster_resamples(check_groups(groups, N.size), n_boot, seed):
        idx = drawn_indices(counts)
        if not loss_law_fittable(N[idx], D[idx]):
            continue
        law = LossLaw.from_theta(_fit_loss_theta(N[idx], D[idx], L[idx], starts))
        rows.append([law.E, law.A, law.B, law.alpha, law.beta])
    return np.asarray(rows, dtype=float).reshape(-1, 5)


def loss_law_ci(samples: np.ndarray) -> dict[str, list[float] | None]:
    """95% percentile intervals of E, A, B, alpha, beta from bootstrap ``samples`` (n, 5)."""
    return {k: percentile_ci(samples[:, i]) for i, k in enumerate(("E", "A", "B", "alpha", "beta"))}


# names of the search coordinates, in the order of _BOUNDS (see _lbfgs_best)
_SEARCH_NAMES = (
    "A (as log A - alpha mean log N)",
    "B (as log B - beta mean log D)",
    "E (as log E)",
    "alpha",
    "beta",
)


def _search_coords(rows: np.ndarray, mean_logN: float, mean_logD: float) -> np.ndarray:
    """Loss-law parameter rows (k, 5) of (E, A, B, alpha, beta) in the coordinates the
    search is bounded in, (a', b', e, alpha, beta) in ``_BOUNDS`` order; shape (k, 5)."""
    E, A, B, alpha, beta = rows.T
    return np.column_stack(
        [np.log(A) - alpha * mean_logN, np.log(B) - beta * mean_logD, np.log(E), alpha, beta]
    )


def loss_law_not_determined(law: LossLaw, samples: np.ndarray, N, D) -> list[str]:
    """One line per loss-law parameter whose point estimate or 95% bootstrap interval
    touches its L-BFGS-B search bound (``_BOUNDS``, ``bound_reason``); empty when the law
    is determined. samples: (n, 5) bootstrap (E, A, B, alpha, beta); N, D: (n_runs,), whose
    mean logs centre A and B as the search does (for the samples too: an approximation,
    each resample's search centres on its own runs)."""
    m = (
        np.log(check_positive("params (N)", N)).mean(),
        np.log(check_positive("crops (D)", D)).mean(),
    )
    point = _search_coords(np.array([[law.E, law.A, law.B, law.alpha, law.beta]]), *m)[0]
    boot = _search_coords(np.asarray(samples, float).reshape(-1, 5), *m)
    reasons = (
        bound_reason(name, point[i], percentile_ci(boot[:, i]), _BOUNDS[i])
        for i, name in enumerate(_SEARCH_NAMES)
    )
    return [r for r in reasons if r]


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


# ------------------------------------------------------------ IsoFLOP profiles


def flops_budgets(C) -> np.ndarray:
    """Budget of each run, shape (n_runs,), numbered 0.. by ascending compute: runs whose
    FLOPs (C) lie within ``BUDGET_RTOL`` (5%) of each other share a budget. Grouping is
    single-linkage on sorted FLOPs (a new budget starts where a run's FLOPs exceed the
    previous run's by more than 5%), so it does not depend on the order of the runs."""
    C = check_positive("flops (C)", C)
    order = np.argsort(C, kind="stable")
    starts = np.diff(np.log(C[order])) > np.log1p(BUDGET_RTOL)
    labels = np.empty(C.size, dtype=int)
    labels[order] = np.concatenate([[0], np.cumsum(starts)])
    return labels


def parabola_batch(u: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares parabola y = c0 + c1 u + c2 u^2 for each row of the counts
    w (B, n) (``linear_batch``); u, y: (n,). Returns (B, 3) rows of (c0, c1, c2), NaN where
    the drawn runs hold fewer than 3 distinct u. Solved in u centred on its mean."""
    uc = u.mean()
    X = np.column_stack([np.ones_like(u), u - uc, (u - uc) ** 2])  # (n, 3)
    ok = _n_distinct_drawn(u, w) >= MIN_ISOFLOP_SIZES
    coef = np.full((w.shape[0], 3), np.nan)
    if ok.any():
        lhs = np.einsum("bn,ni,nj->bij", w[ok], X, X)
        rhs = np.einsum("bn,ni,n->bi", w[ok], X, y)
        coef[ok] = np.linalg.solve(lhs, rhs[:, :, None])[:, :, 0]
    c0, c1, c2 = coef.T  # back from centred u: expand c0 + c1 (u-uc) + c2 (u-uc)^2
    return np.column_stack([c0 - c1 * uc + c2 * uc**2, c1 - 2 * c2 * uc, c2])


def interior_vertex(coef: np.ndarray, u: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Vertex u* = -c1 / (2 c2) of each parabola (coef (B, 3), ``parabola_batch``) where
    it is a minimum (c2 > 0) strictly inside the range of the drawn u (u (n,), counts
    w (B, n)); NaN elsewhere. Shape (B,)."""
    c1, c2 = coef[:, 1], coef[:, 2]
    drawn = w > 0
    lo = np.where(drawn, u, np.inf).min(axis=1)
    hi = np.where(drawn, u, -np.inf).max(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        v = -c1 / (2.0 * c2)
        return np.where((c2 > 0) & (v > lo) & (v < hi), v, np.nan)


def _budget_reason(u: np.ndarray, coef: np.ndarray, n_kept: int, n_boot: int) -> str | None:
    """Why one budget's minimum is not determined (u: (n,) log10 N of its runs, coef: (3,)
    its parabola), or None: fewer than 3 sizes, no curvature, the vertex at or outside
    the edge of the trained sizes, or not an interior minimum in at least 97.5% of the
    resamples (then its 95% interval reaches an edge, as a flat profile's does)."""
    sizes = _n_distinct(u)
    if sizes < MIN_ISOFLOP_SIZES:
        return f"{sizes} distinct model sizes, needs at least {MIN_ISOFLOP_SIZES}"
    if not coef[2] > 0:
        return f"no curvature: the parabola in log10 N opens downward (c2 = {coef[2]:.3g})"
    v = -coef[1] / (2.0 * coef[2])
    if not u.min() < v < u.max():
        return (
            f"minimum at the edge: the vertex N = {10**v:.3g} is not inside the trained "
            f"sizes {10 ** u.min():.3g} to {10 ** u.max():.3g}"
        )
    if n_kept < CI_LEVEL_KEPT * n_boot:  # its 95% interval would reach an edge
        return (
            f"its 95% interval reaches the edge: the vertex is a minimum inside the trained "
            f"sizes in only {n_kept} of {n_boot} resamples"
        )
    return None


def _isoflop_budget(N, L, C, w) -> tuple[dict, np.ndarray]:
    """One budget's IsoFLOP profile from its runs' parameters, loss and FLOPs (n,) and
    the bootstrap counts w (B, n). Returns its fit.json entry and the bootstrap vertices
    log10 N* (B,), NaN where not interior."""
    u, ones = np.log10(N), _all_once(N.size)
    coef = parabola_batch(u, L, ones)[0]
    # a resample's vertex counts where it is a minimum inside the trained sizes (the search
    # range of N*), whichever sizes that resample drew
    boot = interior_vertex(parabola_batch(u, L, w), u, np.ones_like(w))
    n_kept = int(np.isfinite(boot).sum())
    reason = _budget_reason(u, coef, n_kept, w.shape[0])
    ci = percentile_ci(boot)
    entry = {
        "flops": float(np.median(C)),
        "n_runs": int(u.size),
        "sizes": sorted({int(round(n)) for n in N}),
        "n_opt": None if reason else float(10 ** interior_vertex(coef[None], u, ones)[0]),
        "n_opt_ci": None if reason or ci is None else [10 ** ci[0], 10 ** ci[1]],
        "n_kept": n_kept,
        "parabola": None if np.isnan(coef).any() else coef.tolist(),
        "determined": reason is None,
        "reason": reason,
    }
    return entry, boot


def _isoflop_exponent(budgets: list[dict], boot: np.ndarray) -> dict:
    """N* ∝ C^a across the determined budgets: least squares of log10 N* on log10 C.
    Its 95% interval refits the line in each resample on the determined budgets whose
    vertex is interior there (boot: (B, n_budgets) bootstrap log10 N*, NaN where not),
    keeping the resamples with at least 2 of them; fewer than half kept: not determined."""
    det = [i for i, b in enumerate(budgets) if b["determined"]]
    out = {"n_exponent": None, "n_exponent_ci": None, "n_kept": 0, "determined": False}
    if len(det) < 2:
        return {**out, "reason": f"{len(det)} budget(s) with a determined minimum, needs 2"}
    x = np.log10([budgets[i]["flops"] for i in det])
    y = np.log10([budgets[i]["n_opt"] for i in det])
    _, slope = linear_batch(x, y, _all_once(x.size))
    interior = np.isfinite(boot[:, det])
    _, s = linear_batch(x, np.where(interior, boot[:, det], 0.0), interior.astype(int))
    s = s[np.isfinite(s)]  # NaN: fewer than 2 interior budgets in that resample
    out.update(n_exponent=float(slope[0]), n_exponent_ci=percentile_ci(s), n_kept=len(s))
    if 2 * len(s) < boot.shape[0]:
        why = f"2 or more minima are interior in only {len(s)} of {boot.shape[0]} resamples"
        return {**out, "reason": why}
    return {**out, "determined": True, "reason": None}


def isoflop(N, C, L, n_boot: int = 200, seed=0, groups=None) -> dict:
    """IsoFLOP profiles, Chinchilla's approach 2 (section 4 beside approach 3).

    Runs are grouped into budgets (``flops_budgets``); at each budget with >= 3 distinct
    sizes a parabola of L against log10 N gives N*(C) at its vertex when it curves
    upward with the vertex strictly inside the trained sizes, else the budget is not
    determined. Intervals come from one set of trunk-clustered resamples of all runs
    (groups: (n_runs,) trunk labels, None: every run alone), so a trunk's branches at
    several budgets move together. With >= 2 determined budgets, N* ∝ C^a is fitted on
    log10 N* vs log10 C. N, C, L: (n_runs,), positive. Returns the fit.json "isoflop" dict:
    budgets [{flops, n_runs, sizes, n_opt, n_opt_ci, n_kept, parabola [c0, c1, c2] of
    L = c0 + c1 log10 N + c2 log10(N)^2, determined, reason}], n_exponent, n_exponent_ci,
    n_kept, determined, reason.
    """
    N, C, L = (
        check_positive("params (N)", N),
        check_positive("flops (C)", C),
        check_positive("loss (L)", L),
    )
    _same_length(N=N, C=C, L=L)
    w = cluster_resamples(check_groups(groups, N.size), n_boot, seed)
    labels = flops_budgets(C)
    fits = [
        _isoflop_budget(N[s], L[s], C[s], w[:, s])
        for s in (labels == b for b in range(labels.max() + 1))
    ]
    budgets = [entry for entry, _ in fits]
    boot = np.column_stack([v for _, v in fits]) if n_boot else np.empty((0, len(fits)))
    return {"budgets": budgets, **_isoflop_exponent(budgets, boot)}


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
    if x.size < runs or _n_distinct(x, COMPUTE_TOL) < computes:
        raise InputError(
            f"{law} law: {x.size} runs at {_n_distinct(x, COMPUTE_TOL)} distinct computes "
            f"(within {BUDGET_RTOL:.0%} is one), needs at least "
            f"{runs} runs at {computes} distinct computes"
        )
    return x, m


def check_linear_inputs(C, m) -> tuple[np.ndarray, np.ndarray]:
    """Validate (C, m) for the linear law: >= 3 runs at >= 2 distinct computes."""
    return _check_metric_inputs("linear", C, m, MIN_LINEAR_RUNS, MIN_LINEAR_COMPUTES)


def linear_batch(x: np.ndarray, m: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares (intercept, slope) of m = intercept + slope x for each row of the
    counts w (B, n) (each run weighted by how often a resample draws it, which is the
    least-squares fit of the resample); x, m: (n,) or (B, n). Returns two (B,) arrays;
    rows whose drawn runs hold a single distinct x give NaN."""
    xm, mm = _weighted_mean(x, w)[:, None], _weighted_mean(m, w)[:, None]
    xc = x - xm
    sxx = (w * xc * xc).sum(axis=1)
    ok = _n_distinct_drawn(x, w, COMPUTE_TOL) >= MIN_LINEAR_COMPUTES
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(ok, (w * xc * (m - mm)).sum(axis=1) / sxx, np.nan)
    return mm[:, 0] - slope * xm[:, 0], slope


def _all_once(n: int) -> np.ndarray:
    """Counts (1, n) of the full data: every run drawn once."""
    return np.ones((1, n), dtype=int)


def fit_linear(C, m) -> LinearLaw:
    """Least-squares fit of m = intercept + slope log10 C; C (FLOPs), m: shape (n_runs,)."""
    x, m = check_linear_inputs(C, m)
    intercept, slope = linear_batch(x, m, _all_once(x.size))
    return LinearLaw(float(intercept[0]), float(slope[0]))


def linear_samples(C, m, n_boot: int = 200, seed=0, groups=None) -> np.ndarray:
    """Bootstrap (intercept, slope) of the linear law over ``n_boot`` seeded
    trunk-clustered resamples of the runs (groups: (n_runs,) trunk labels, None: every
    run alone), shape (n_kept, 2); resamples at a single compute are dropped."""
    x, m = check_linear_inputs(C, m)
    w = cluster_resamples(check_groups(groups, x.size), n_boot, seed)
    intercept, slope = linear_batch(x, m, w)
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


def _profile(gamma: np.ndarray, x: np.ndarray, m: np.ndarray, w: np.ndarray):
    """Variable projection of the saturating law: for fixed gamma it is linear in
    (m_inf, gap), m = m_inf - gap z with z = 10^(-gamma x).

    gamma: (B, G) candidate exponents; x: (B, n) centred log10 C; m: (n,) or (B, n);
    w: (B, n) counts (``linear_batch``). Returns the weighted least-squares m_inf, gap
    and residual sum of squares, each (B, G); gap is clipped at 0 (a flat law) where
    the data fall with compute.
    """
    m, wz = np.broadcast_to(m, w.shape), w[:, None, :]
    z = 10.0 ** (-gamma[:, :, None] * x[:, None, :])
    zm = (wz * z).sum(axis=2) / w.sum(axis=1)[:, None]
    zc = z - zm[:, :, None]
    mm = _weighted_mean(m, w)
    szz = (wz * zc * zc).sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = -(wz * zc * (m - mm[:, None])[:, None, :]).sum(axis=2) / szz
    gap = np.where(np.isfinite(gap) & (gap > 0), gap, 0.0)
    m_inf = mm[:, None] + gap * zm
    sse = (wz * (m_inf[:, :, None] - gap[:, :, None] * z - m[:, None, :]) ** 2).sum(axis=2)
    return m_inf, gap, sse


def _saturating_batch(x: np.ndarray, m: np.ndarray, w: np.ndarray):
    """Fit the saturating law to x (n,) (log10 C) and m (n,) once for each row of the
    counts w (B, n) (``linear_batch``).

    The residual is profiled over a log grid of gamma in [1e-3, 5], then the grid is
    zoomed around the best point (each zoom narrows the step 8x). Returns m_inf, gap,
    gamma and x_center (the row's weighted mean log10 C), each (B,); gap <= 0 marks a
    row whose metric does not rise.
    """
    xc = _weighted_mean(x, w)
    x = x - xc[:, None]
    lo = np.full(x.shape[0], np.log(GAMMA_LO))
    hi = np.full(x.shape[0], np.log(GAMMA_HI))
    size = _GAMMA_GRID
    rows = np.arange(x.shape[0])
    for _ in range(_GAMMA_ZOOMS + 1):
        grid = lo[:, None] + (hi - lo)[:, None] * np.linspace(0.0, 1.0, size)[None, :]
        _, _, sse = _profile(np.exp(grid), x, m, w)
        i = np.argmin(sse, axis=1)
        lo = grid[rows, np.maximum(i - 1, 0)]
        hi = grid[rows, np.minimum(i + 1, size - 1)]
        best = grid[rows, i]
        size = _GAMMA_ZOOM
    gamma = np.exp(best)
    m_inf, gap, _ = _profile(gamma[:, None], x, m, w)
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
    m_inf, gap, gamma, xc = _saturating_batch(x, m, _all_once(x.size))
    if not gap[0] > 0:
        raise InputError("saturating law: the metric does not rise with compute")
    return SaturatingLaw(float(m_inf[0]), float(gap[0]), float(gamma[0]), float(xc[0]))


def saturating_samples(C, m, n_boot: int = 200, seed=0, groups=None) -> np.ndarray:
    """Bootstrap (m_inf, k, gamma) of the saturating law over ``n_boot`` seeded
    trunk-clustered resamples of the runs (groups as ``linear_samples``), shape
    (n_kept, 3); resamples at < 3 distinct computes or where the metric does not rise
    are dropped."""
    x, m = check_saturating_inputs(C, m)
    w = cluster_resamples(check_groups(groups, x.size), n_boot, seed)
    w = w[_n_distinct_drawn(x, w, COMPUTE_TOL) >= MIN_SATURATING_COMPUTES]
    out = np.empty((0, 3))
    if w.shape[0]:
        m_inf, gap, gamma, xc = _saturating_batch(x, m, w)
        with np.errstate(over="ignore"):
            k = gap * 10.0 ** (gamma * xc)
        keep = gap > 0
        out = np.column_stack([m_inf[keep], k[keep], gamma[keep]])
    return out


def saturating_not_determined(law: SaturatingLaw, samples: np.ndarray) -> list[str]:
    """One line when gamma's point estimate or 95% bootstrap interval (samples: (n, 3)
    of (m_inf, k, gamma)) touches its search bound [GAMMA_LO, GAMMA_HI] (searched in log
    gamma, ``bound_reason``); empty when the law is determined."""
    ci = percentile_ci(np.asarray(samples, float).reshape(-1, 3)[:, 2])
    reason = bound_reason("gamma", law.gamma, ci, (GAMMA_LO, GAMMA_HI), log=True)
    return [reason] if reason else []


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
    for held in (x >= cut - 1e-12, x >= top - COMPUTE_TOL):
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


def multiplier_samples(
    ref: tuple, other: tuple, C: float, n_boot: int = 200, seed=0, groups=(None, None)
):
    """Bootstrap the effective-compute multiplier at compute C: resample the trunks
    within each curation (``ref`` and ``other`` are (C, m) pairs of shape (n_runs,);
    ``groups`` their trunk labels, (n_ref,) and (n_other,), None: every run alone), refit
    both linear laws, and evaluate ``effective_compute_multiplier``. Resamples at a
    single compute or with a slope <= 0 are dropped. Returns shape (n_kept,)."""
    xr, mr = check_linear_inputs(*ref)
    xo, mo = check_linear_inputs(*other)
    rng = np.random.default_rng(seed)
    wr = cluster_resamples(check_groups(groups[0], xr.size), n_boot, rng)
    wo = cluster_resamples(check_groups(groups[1], xo.size), n_boot, rng)
    ar, sr = linear_batch(xr, mr, wr)
    ao, so = linear_batch(xo, mo, wo)
    x = np.log10(C)
    keep = np.isfinite(sr) & np.isfinite(so) & (sr > 0) & (so > 0)
    with np.errstate(over="ignore"):
        return 10.0 ** ((ar[keep] + sr[keep] * x - ao[keep]) / so[keep] - x)
