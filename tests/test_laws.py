"""Scaling-law math of analysis.laws against independent computations (ARCHITECTURE
section 4): the trunk-clustered bootstrap, "not determined" at search bounds, and the
IsoFLOP profiles (Chinchilla's approach 2)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from analysis import laws
from scaling.errors import InputError

WELL_POSED = laws.LossLaw(E=1.0, A=400.0, B=400.0, alpha=0.35, beta=0.3)
K = 6.0  # C = K N D
BUDGETS = (1e13, 1e14, 1e15)


# ------------------------------------------------------------ trunk-clustered bootstrap


def planted_trunks(seed: int, offset_sd: float = 0.03):
    """4 trunks of 3 runs; trunk t covers log10 C = 10 + 0.5 t + (0, 0.5, 1); the metric is
    a linear law (slope 0.03) plus a trunk-level random offset (sd ``offset_sd``) and a
    little run noise (sd 0.002).
    Returns C (12,), m (12,) and the trunk of each run (12,)."""
    rng = np.random.default_rng(seed)
    trunk = np.repeat(np.arange(4), 3)
    x = 10.0 + 0.5 * trunk + np.tile([0.0, 0.5, 1.0], 4)
    m = 0.1 + 0.03 * x + rng.normal(0.0, offset_sd, 4)[trunk] + rng.normal(0.0, 0.002, 12)
    return 10.0**x, m, trunk


def brute_trunk_slopes(C, m, trunk, n_boot: int, seed: int) -> np.ndarray:
    """Slopes of m on log10 C over trunk resamples drawn with python's random: pick as
    many trunks as there are, with replacement, and pool all their runs."""
    r, x = random.Random(seed), np.log10(C)
    members = {t: np.flatnonzero(trunk == t) for t in set(trunk.tolist())}
    out = []
    for _ in range(n_boot):
        idx = np.concatenate([members[t] for t in r.choices(sorted(members), k=len(members))])
        out.append(np.polyfit(x[idx], m[idx], 1)[0])
    return np.array(out)


def test_cluster_resamples_with_every_run_alone_is_the_run_bootstrap():
    counts = laws.cluster_resamples(np.arange(7), 50, 3)
    draws = np.random.default_rng(3).integers(0, 7, size=(50, 7))
    assert (counts == np.array([np.bincount(d, minlength=7) for d in draws])).all()
    C, m, _ = planted_trunks(0)
    alone = laws.linear_samples(C, m, 100, 5, groups=[f"r{i}" for i in range(12)])
    assert np.allclose(alone, laws.linear_samples(C, m, 100, 5))


def test_cluster_resamples_take_whole_trunks():
    groups = np.array(["b", "b", "a", "c", "c", "c", "a"])
    counts = laws.cluster_resamples(groups, 300, 0)
    for g in "abc":
        cols = counts[:, groups == g]
        assert (cols == cols[:, :1]).all()  # every run of a trunk drawn as often
    per_trunk = np.column_stack([counts[:, groups == g][:, 0] for g in "abc"])
    assert (per_trunk.sum(axis=1) == 3).all()  # 3 trunks drawn a resample
    assert np.allclose(per_trunk.mean(axis=0), 1.0, atol=0.15)  # each with equal chance


def test_clustered_slope_interval_matches_a_brute_force_trunk_bootstrap():
    C, m, trunk = planted_trunks(0)
    clustered = laws.linear_samples(C, m, 4000, 0, groups=trunk)[:, 1]
    brute = brute_trunk_slopes(C, m, trunk, 4000, 1)
    assert np.std(clustered) == pytest.approx(np.std(brute), rel=0.08)
    assert np.mean(clustered) == pytest.approx(np.mean(brute), abs=0.1 * np.std(brute))
    naive = laws.linear_samples(C, m, 4000, 0)[:, 1]  # runs as if independent
    assert np.std(naive) < 0.85 * np.std(clustered)
    (lo, hi), (nlo, nhi) = laws.percentile_ci(clustered), laws.percentile_ci(naive)
    assert hi - lo > 1.2 * (nhi - nlo)


def test_bootstrap_loss_law_refits_on_whole_trunks(monkeypatch):
    N, D = (a.ravel() for a in np.meshgrid(np.geomspace(1e5, 1e7, 4), np.geomspace(1e5, 1e7, 4)))
    L = WELL_POSED(N, D)
    trunk = np.repeat(np.arange(8), 2)  # pairs of runs share a trunk
    point = laws.fit_loss_law(N, D, L)
    seen = []
    fit_theta = laws._fit_loss_theta

    def record(n, d, loss, starts):
        seen.append(loss)
        return fit_theta(n, d, loss, starts)

    monkeypatch.setattr(laws, "_fit_loss_theta", record)
    laws.bootstrap_loss_law(N, D, L, point, n_boot=6, seed=0, groups=trunk)
    assert seen
    run_of = {v: i for i, v in enumerate(L.tolist())}  # every run has its own loss
    for drawn in seen:
        runs = [run_of[v] for v in drawn.tolist()]
        per_run = np.bincount(runs, minlength=L.size)
        assert (per_run[0::2] == per_run[1::2]).all() and per_run.sum() == L.size


def test_multiplier_resamples_trunks_within_each_curation():
    C, m, trunk = planted_trunks(0, offset_sd=0.01)
    other = (C, m - 0.03 * np.log10(4.0))  # needs 4x the compute of the reference
    point = laws.effective_compute_multiplier(laws.fit_linear(C, m), laws.fit_linear(*other), 1e11)
    naive = laws.percentile_ci(laws.multiplier_samples((C, m), other, 1e11, 2000, 0))
    clustered = laws.percentile_ci(
        laws.multiplier_samples((C, m), other, 1e11, 2000, 0, groups=(trunk, trunk))
    )
    slope = laws.fit_linear(C, m).slope  # same slope for both: 4x at slope 0.03
    assert point == pytest.approx(4.0 ** (0.03 / slope)) and clustered[0] < point < clustered[1]
    assert np.log(clustered[1] / clustered[0]) > 1.3 * np.log(naive[1] / naive[0])


# --------------------------------------------------------------- not determined


def grid_5x5(law, seed: int = 0, noise: float = 1e-3):
    rng = np.random.default_rng(seed)
    N, D = (a.ravel() for a in np.meshgrid(np.geomspace(1e5, 1e7, 5), np.geomspace(1e5, 1e7, 5)))
    return N, D, law(N, D) * np.exp(rng.normal(0.0, noise, N.size))


def test_loss_independent_of_n_is_not_determined_naming_alpha():
    N, D, L = grid_5x5(lambda n, d: 1.0 + 400.0 / d**0.3 + 0.0 * n)
    law = laws.fit_loss_law(N, D, L)
    reasons = laws.loss_law_not_determined(law, laws.bootstrap_loss_law(N, D, L, law, 20), N, D)
    assert any(r.startswith("alpha") and "search bound 0 " in r for r in reasons), reasons


def test_well_posed_law_is_determined_and_recovered():
    N, D, L = grid_5x5(WELL_POSED)
    law = laws.fit_loss_law(N, D, L)
    samples = laws.bootstrap_loss_law(N, D, L, law, 20)
    assert laws.loss_law_not_determined(law, samples, N, D) == []
    for name in ("E", "A", "B", "alpha", "beta"):
        assert getattr(law, name) == pytest.approx(getattr(WELL_POSED, name), rel=0.05), name


def test_bound_reason_uses_a_relative_tolerance_of_the_search_range():
    assert laws.bound_reason("alpha", 0.004, None, (0.0, 5.0)) is not None  # 4e-3 < 5e-3
    assert laws.bound_reason("alpha", 0.006, None, (0.0, 5.0)) is None
    assert laws.bound_reason("alpha", 0.3, [0.2, 4.996], (0.0, 5.0)).endswith("bound 5 of [0, 5]")
    # in log space: 0.5% above 1e-3 touches, 2x above does not
    assert laws.bound_reason("gamma", 1.005e-3, None, (1e-3, 5.0), log=True) is not None
    assert laws.bound_reason("gamma", 2e-3, [2e-3, 0.1], (1e-3, 5.0), log=True) is None


def test_saturating_law_of_a_straight_line_is_not_determined():
    C = np.geomspace(1e10, 1e14, 12)
    m = 0.05 + 0.03 * np.log10(C)  # linear in log C: gamma runs to its lower bound
    law = laws.fit_saturating(C, m)
    reasons = laws.saturating_not_determined(law, laws.saturating_samples(C, m, 50, 0))
    assert len(reasons) == 1 and reasons[0].startswith("gamma")
    k = 0.4 * 10 ** (0.15 * 10)
    bent = 0.6 - k * C**-0.15
    law = laws.fit_saturating(C, bent)
    assert laws.saturating_not_determined(law, laws.saturating_samples(C, bent, 50, 0)) == []


# --------------------------------------------------------------- IsoFLOP profiles


def isoflop_runs(offsets, seed: int = 0, noise: float = 1e-4):
    """Two runs per size at each budget of BUDGETS; sizes at ``offsets`` decades from the
    closed-form N_opt of the budget; FLOPs jittered by up to 2%; D = C / (K N) from the
    nominal budget. Returns N, C, L, each (n,)."""
    rng = np.random.default_rng(seed)
    N, C, nominal = [], [], []
    for c in BUDGETS:
        n_opt = float(laws.n_opt_d_opt(c, WELL_POSED, K)[0])
        for o in offsets:
            for _ in range(2):
                N.append(n_opt * 10.0**o)
                C.append(c * (1 + rng.uniform(-0.02, 0.02)))
                nominal.append(c)
    N, C, nominal = np.array(N), np.array(C), np.array(nominal)
    L = WELL_POSED(N, nominal / (K * N)) * (1 + rng.normal(0.0, noise, N.size))
    return N, C, L


def test_flops_budgets_group_runs_within_5_percent_in_any_order():
    C = np.array([4.1e12, 1e12, 1.03e12, 4e12, 0.98e12, 1.6e13])
    assert laws.flops_budgets(C).tolist() == [1, 0, 0, 1, 0, 2]
    perm = np.random.default_rng(0).permutation(C.size)
    assert laws.flops_budgets(C[perm]).tolist() == laws.flops_budgets(C)[perm].tolist()


def test_isoflop_vertex_is_the_minimum_of_the_fitted_parabola():
    N, C, L = isoflop_runs(np.linspace(-0.6, 0.6, 5))
    out = laws.isoflop(N, C, L, n_boot=100, seed=0)
    assert [b["n_runs"] for b in out["budgets"]] == [10, 10, 10]
    for b, c in zip(out["budgets"], BUDGETS, strict=True):
        at = np.abs(np.log(C / c)) < 0.05
        u = np.log10(N[at])
        coef = np.polyfit(u, L[at], 2)  # independent fit, then a brute-force grid minimum
        grid = np.linspace(u.min(), u.max(), 200_001)
        assert np.log10(b["n_opt"]) == pytest.approx(
            grid[np.argmin(np.polyval(coef, grid))], abs=1e-4
        )
        truth = float(laws.n_opt_d_opt(c, WELL_POSED, K)[0])
        assert abs(np.log10(b["n_opt"] / truth)) < 0.03  # the parabola's vertex, near N_opt
        lo, hi = b["n_opt_ci"]
        assert lo < b["n_opt"] < hi and b["determined"] and b["reason"] is None
    s = WELL_POSED.beta / (WELL_POSED.alpha + WELL_POSED.beta)
    assert out["determined"] and out["n_exponent"] == pytest.approx(s, abs=0.01)
    lo, hi = out["n_exponent_ci"]
    assert lo < out["n_exponent"] < hi and hi - lo < 0.05


def test_isoflop_minimum_at_the_edge_is_not_determined():
    N, C, L = isoflop_runs(np.linspace(0.3, 1.2, 4))  # every size above the optimum
    out = laws.isoflop(N, C, L, n_boot=50, seed=0)
    for b in out["budgets"]:
        assert not b["determined"] and b["n_opt"] is None and "edge" in b["reason"]
    assert not out["determined"] and out["n_exponent"] is None
    few = laws.isoflop(N[:4], C[:4], L[:4], n_boot=10, seed=0)["budgets"][0]
    assert not few["determined"] and "2 distinct model sizes" in few["reason"]


def test_runs_within_five_percent_of_flops_count_as_one_compute():
    """A ladder's runs at one budget spend slightly different FLOPs (whole steps): two
    budgets are two computes, so holding out the top one leaves nothing to fit a line
    through, and no held-out error is made up by extrapolating from FLOP jitter."""
    C = np.array([4.98e11, 4.99e11, 5.0e11, 4.99e12, 5.0e12, 5.01e12])
    m = np.array([0.20, 0.22, 0.21, 0.30, 0.29, 0.31])
    with pytest.raises(InputError, match="at 1 distinct computes"):
        laws.check_linear_inputs(C[:3], m[:3])
    assert laws.check_linear_inputs(C, m)  # two computes: a line
    held = laws.holdout_mask(C, lambda tr: _can_fit_linear(C[tr], m[tr]))
    assert held is None


def _can_fit_linear(C, m) -> bool:
    try:
        laws.check_linear_inputs(C, m)
    except InputError:
        return False
    return True
