"""Scaling-law fits against planted truth (ARCHITECTURE section 4 "Scaling laws",
section 6 fit.json contract): every test generates data from a known law and checks the
fit recovers it, or that bad input is refused with a clear InputError."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis import fit as F
from analysis import laws
from scaling.errors import InputError
from tests.conftest import run_cli

TRUTH = {"E": 1.7, "A": 400.0, "B": 150.0, "alpha": 0.36, "beta": 0.26}
LAW = laws.LossLaw(**TRUTH)
K_FLOPS = 6.0  # C = k N D in the planted tables
SIZES = {"cpu-xs": 1e5, "cpu-s": 4e5, "cpu-m": 1.6e6, "cpu-l": 6.4e6}
CROPS = [1e5, 4e5, 1.6e6, 6.4e6]
SHIFT = np.log10(4.0)  # random curation needs exactly 4x the compute of phenoprints


# --------------------------------------------------------------------------- helpers


def loss_grid(seed: int, n_sizes: int = 5, n_crops: int = 5, noise: float = 0.01):
    """N, D on a log grid (1e5..1e7 each) and L from the planted law with
    multiplicative log-normal noise; both terms move L by several units over the grid."""
    rng = np.random.default_rng(seed)
    N, D = (
        a.ravel()
        for a in np.meshgrid(np.geomspace(1e5, 1e7, n_sizes), np.geomspace(1e5, 1e7, n_crops))
    )
    return N, D, LAW(N, D) * np.exp(rng.normal(0.0, noise, N.size))


def recall(x):
    """Planted linear metric law in log10 compute."""
    return 0.02 + 0.03 * x


def pathway(x):
    """Planted metric that saturates hard: 0.9 - 0.5 * 10^(-0.8 (x - 10.5))."""
    return 0.9 - 0.5 * 10.0 ** (-0.8 * (x - 10.5))


def planted_block(i: int, depth: int = 4) -> int:
    return 1 + (i * 7) % depth


def make_tables(
    seed: int = 0, noise: float = 0.002, random_slope: float = 0.03, trunk_sd: float = 0.0
):
    """Runs (2 curations x 4 sizes x 4 crop counts, plus 2 baselines) and metrics.

    Each run has a planted best block where the *_val probes peak; other blocks score
    0.05 lower per block of distance. recall_complex follows ``recall`` for phenoprints
    and the same law shifted by 4x compute for random (slope ``random_slope``), plus a
    random offset (sd ``trunk_sd``) shared by the runs of a WSD trunk (one trunk per
    curation and size, ``wsd_trunk``); probe_pathway follows ``pathway``; rare_metric
    exists for 2 runs only.
    """
    rng = np.random.default_rng(seed)
    runs, rows = [], []
    i = 0
    for cur in ("phenoprints", "random"):
        for name, n in SIZES.items():
            trunk, offset = f"{cur}-{name}", rng.normal(0.0, trunk_sd)
            for d in CROPS:
                rid = f"{cur}-{name}-{int(d)}"
                C = K_FLOPS * n * d
                x = np.log10(C)
                loss = float(LAW(n, d) * np.exp(rng.normal(0.0, 0.01)))
                runs.append((rid, name, int(n), cur, int(d), C, loss, "mae", 4, trunk))
                if cur == "phenoprints":
                    rc = recall(x) + offset
                else:
                    rc = recall(x - SHIFT) + (random_slope - 0.03) * (x - 12.0) + offset
                targets = {"recall_complex": rc, "probe_pathway": pathway(x)}
                best = planted_block(i)
                for b in range(1, 5):
                    off = abs(b - best)
                    rows.append((rid, b, "probe_perturbation_val", 0.6 - 0.1 * off))
                    rows.append((rid, b, "probe_pathway_val", 0.4 - 0.1 * off))
                    for metric, value in targets.items():
                        v = value - 0.05 * off + rng.normal(0.0, noise)
                        rows.append((rid, b, metric, v))
                if i < 2:
                    rows.append((rid, best, "rare_metric", 0.5))
                i += 1
    for rid in ("random-init", "pixel-pca"):
        runs.append((rid, rid, 0, "none", 0, 0.0, np.nan, "baseline", 1, None))
        rows.append((rid, 0, "recall_complex", 0.11))
    cols = [*F.RUNS_COLUMNS, "kind", "depth", "wsd_trunk"]
    return pd.DataFrame(runs, columns=cols), pd.DataFrame(rows, columns=F.METRICS_COLUMNS)


def flat_in_n(runs: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """``runs`` with a loss that does not depend on N (alpha = 0): 1.7 + 150 / D^0.26."""
    out = runs.copy()
    mae = out["kind"] == "mae"
    noise = np.exp(np.random.default_rng(seed).normal(0.0, 0.003, int(mae.sum())))
    out.loc[mae, "loss"] = (1.7 + 150.0 / out.loc[mae, "crops_seen"] ** 0.26) * noise
    return out


@pytest.fixture(scope="module")
def tables():
    return make_tables()


@pytest.fixture(scope="module")
def fitted(tables):
    runs, metrics = tables
    return F.fit_tables(runs, metrics, bootstrap=40, seed=0)


# -------------------------------------------------------------------------- loss law


def test_loss_law_point_estimate_recovers_planted_law():
    law = laws.fit_loss_law(*loss_grid(seed=0))
    assert law.alpha == pytest.approx(TRUTH["alpha"], abs=0.04)
    assert law.beta == pytest.approx(TRUTH["beta"], abs=0.04)
    assert abs(law.E - TRUTH["E"]) < 0.5


def test_loss_law_intervals_cover_truth_over_seeds():
    covered = dict.fromkeys(TRUTH, 0)
    points, widths = [], []
    for seed in range(10):
        N, D, L = loss_grid(seed, n_sizes=4, n_crops=5)
        law = laws.fit_loss_law(N, D, L)
        ci = laws.loss_law_ci(laws.bootstrap_loss_law(N, D, L, law, n_boot=20, seed=seed))
        points.append([law.E, law.alpha, law.beta])
        widths.append(ci["alpha"][1] - ci["alpha"][0])
        for k, truth in TRUTH.items():
            covered[k] += ci[k][0] <= truth <= ci[k][1]
    assert covered["alpha"] >= 7 and covered["beta"] >= 7 and covered["E"] >= 7, covered
    assert 0.0 < np.median(widths) < 0.15  # informative, not covering by being vast
    e_hat, alpha, beta = np.median(points, axis=0)
    assert alpha == pytest.approx(TRUTH["alpha"], abs=0.02)
    assert beta == pytest.approx(TRUTH["beta"], abs=0.02)
    assert abs(e_hat - TRUTH["E"]) < 0.3


def test_compute_optimal_exponents_match_planted_law():
    law = laws.fit_loss_law(*loss_grid(seed=1))
    n_exp, d_exp = laws.compute_optimal_exponents(law.alpha, law.beta)
    s = TRUTH["alpha"] + TRUTH["beta"]
    assert n_exp == pytest.approx(TRUTH["beta"] / s, abs=0.03)
    assert d_exp == pytest.approx(TRUTH["alpha"] / s, abs=0.03)
    assert n_exp + d_exp == pytest.approx(1.0)


@pytest.mark.parametrize("C", [1e13, 1e17, 1e21])
def test_closed_form_n_opt_minimises_loss_on_the_compute_curve(C):
    n_opt, d_opt = laws.n_opt_d_opt(C, LAW, K_FLOPS)
    N = np.geomspace(1e2, 1e14, 400_001)  # brute force along C = k N D
    L = LAW(N, C / (K_FLOPS * N))
    n_best = N[np.argmin(L)]
    assert n_opt == pytest.approx(n_best, rel=2e-3)
    assert K_FLOPS * n_opt * d_opt == pytest.approx(C)
    assert LAW(n_opt, d_opt) <= L.min() + 1e-12


def test_n_opt_scales_with_the_compute_optimal_exponent():
    C = np.array([1e15, 1e20])
    n_opt, d_opt = laws.n_opt_d_opt(C, LAW, K_FLOPS)
    n_exp, d_exp = laws.compute_optimal_exponents(LAW.alpha, LAW.beta)
    assert np.diff(np.log(n_opt))[0] / np.diff(np.log(C))[0] == pytest.approx(n_exp)
    assert np.diff(np.log(d_opt))[0] / np.diff(np.log(C))[0] == pytest.approx(d_exp)


# ----------------------------------------------------------------------- metric laws


def test_linear_law_recovers_planted_slope_and_intercept():
    rng = np.random.default_rng(3)
    C = np.geomspace(1e10, 1e14, 20)
    m = 0.05 + 0.03 * np.log10(C) + rng.normal(0.0, 0.005, C.size)
    law = laws.fit_linear(C, m)
    s = laws.linear_samples(C, m, n_boot=200, seed=0)
    lo, hi = laws.percentile_ci(s[:, 1])
    assert law.slope == pytest.approx(0.03, abs=0.003)
    assert lo <= 0.03 <= hi and hi - lo < 0.01
    lo, hi = laws.percentile_ci(s[:, 0])
    assert lo <= 0.05 <= hi
    point, (plo, phi) = laws.predict_linear(1e15, law, s)
    assert plo <= point <= phi and point == pytest.approx(0.05 + 0.03 * 15, abs=0.02)


def test_saturating_law_recovers_planted_asymptote_and_exponent():
    rng = np.random.default_rng(4)
    C = np.geomspace(1e10, 1e14, 12)
    k = 0.4 * 10 ** (0.15 * 10)  # gap 0.4 at 1e10, 0.1 at 1e14
    m = 0.6 - k * C**-0.15 + rng.normal(0.0, 1e-4, C.size)
    law = laws.fit_saturating(C, m)
    assert law.m_inf == pytest.approx(0.6, abs=0.01)
    assert law.gamma == pytest.approx(0.15, abs=0.01)
    assert law.k == pytest.approx(k, rel=0.1)
    s = laws.saturating_samples(C, m, n_boot=100, seed=0)
    for i, truth in enumerate((0.6, k, 0.15)):
        lo, hi = laws.percentile_ci(s[:, i])
        assert lo <= truth <= hi


def test_saturating_law_refuses_a_falling_metric():
    C = np.geomspace(1e10, 1e14, 8)
    with pytest.raises(InputError, match="does not rise"):
        laws.fit_saturating(C, 1.0 - 0.02 * np.log10(C))


def test_holdout_error_small_on_the_law_and_large_when_the_law_bends(fitted):
    straight = fitted["metric_laws"]["recall_complex"]
    bent = fitted["metric_laws"]["probe_pathway"]
    assert straight["holdout_error"] < 0.02
    assert bent["holdout_error"] > 0.05
    assert bent["holdout"]["saturating_error"] < 0.01  # the right law predicts the top
    assert fitted["loss_law"]["holdout_error"] < 0.03
    held = fitted["loss_law"]["holdout"]["run_ids"]
    top = max(r["flops"] for r in fitted["best_block"])
    assert any(r["flops"] == top and r["run_id"] in held for r in fitted["best_block"])


def test_holdout_keeps_enough_runs_to_fit():
    three = lambda train: train.sum() >= 3  # noqa: E731
    C = np.array([1e10, 1e11, 1.5e12, 2e12, 1e11, 1e10])
    assert laws.holdout_mask(C, three).tolist() == [False, False, True, True, False, False]
    # the top 20% of the range would leave 2 runs: fall back to the top compute only
    held = laws.holdout_mask(C[:4], three)
    assert held.tolist() == [False, False, False, True]
    # nothing can be held out and still leave 3 runs at a lower compute
    assert laws.holdout_mask(np.array([1e10, 1e11, 1e12, 1e12]), three) is None


# ---------------------------------------------------------- frontier and best blocks


def brute_frontier(C, v, better):
    out = []
    for c in sorted(set(C)):
        vals = [x for x, cc in zip(v, C, strict=True) if cc <= c]
        best = vals[0]
        for x in vals[1:]:
            if better(x, best):
                best = x
        out.append((c, best))
    return out


def test_frontier_equals_a_brute_force_running_best():
    rng = np.random.default_rng(5)
    C = rng.choice([1e10, 3e10, 1e11, 5e11, 2e12], size=40)  # ties on compute
    v = rng.normal(size=40)
    ids = np.array([f"r{i}" for i in range(40)])
    for higher, better in ((True, lambda a, b: a > b), (False, lambda a, b: a < b)):
        got = laws.frontier(C, v, ids, higher_is_better=higher)
        assert [(c, val) for c, val, _ in got] == brute_frontier(C, v, better)
        for c, val, rid in got:  # the named run holds the value and is within the compute
            j = int(rid[1:])
            assert v[j] == val and C[j] <= c


def test_best_block_is_the_argmax_of_mean_val_metrics_ties_low():
    rows = []
    # run a: p_val peaks at 3, q_val at 1; their mean peaks at 2 and 4 (tie -> 2)
    for b, p, q in [(1, 0.1, 0.9), (2, 0.6, 0.6), (3, 0.9, 0.1), (4, 0.7, 0.5)]:
        rows += [("a", b, "probe_perturbation_val", p), ("a", b, "probe_pathway_val", q)]
    rows += [("a", b, "recall_complex", 0.1 * b) for b in range(1, 5)]
    rows += [("b", b, "recall_complex", 0.1 * b) for b in range(1, 4)]  # no *_val: last
    metrics = pd.DataFrame(rows, columns=F.METRICS_COLUMNS)
    blocks = F.best_blocks(metrics)
    assert blocks.to_dict() == {"a": 2, "b": 3}
    values = F.values_at_blocks(metrics, blocks)
    assert values.loc["a", "recall_complex"] == pytest.approx(0.2)


def test_fit_tables_uses_the_planted_best_blocks(fitted):
    rows = {r["run_id"]: r for r in fitted["best_block"]}
    assert len(rows) == 32
    runs, _ = make_tables()
    for i, rid in enumerate(runs["run_id"][:32]):
        assert rows[rid]["block"] == planted_block(i)
        assert rows[rid]["metric"] == "recall_complex"
        assert rows[rid]["value_best"] >= rows[rid]["value_last"] - 0.01
    assert fitted["baselines"]["pixel-pca"]["recall_complex"] == pytest.approx(0.11)
    assert "probe_pathway_val" not in fitted["metric_laws"]


# ---------------------------------------------------------------------- curation


def test_curation_multiplier_recovers_a_planted_4x_shift(fitted):
    entry = fitted["curation"]["recall_complex"]
    assert entry["reference"] == "phenoprints" and entry["other"] == "random"
    assert entry["multiplier"] == pytest.approx(4.0, rel=0.1)
    lo, hi = entry["ci"]
    assert lo <= 4.0 <= hi and hi / lo < 2.0
    assert entry["reason"] is None


def test_curation_multiplier_is_null_when_the_other_slope_is_not_positive():
    runs, metrics = make_tables(random_slope=-0.001)
    out = F.fit_tables(runs, metrics, bootstrap=10, seed=0)
    entry = out["curation"]["recall_complex"]
    assert entry["multiplier"] is None and entry["ci"] is None
    assert "slope" in entry["reason"]


def test_multiplier_formula_on_exact_laws():
    ref, other = laws.LinearLaw(0.1, 0.03), laws.LinearLaw(0.1 - 0.03 * SHIFT, 0.03)
    assert laws.effective_compute_multiplier(ref, other, 1e12) == pytest.approx(4.0)


# -------------------------------------------------------- trunks, not determined


def test_trunk_groups_fall_back_to_the_run_where_the_trunk_is_missing():
    runs = pd.DataFrame({"run_id": list("abcde"), "wsd_trunk": ["t", None, np.nan, " ", "t"]})
    assert F.trunk_groups(runs).tolist() == ["t", "b", "c", "d", "t"]
    assert F.trunk_groups(runs.drop(columns="wsd_trunk")).tolist() == list("abcde")


def test_metric_intervals_resample_wsd_trunks():
    runs, metrics = make_tables(trunk_sd=0.05)  # runs of a trunk share a metric offset
    clustered = F.fit_tables(runs, metrics, bootstrap=50, seed=0)
    naive = F.fit_tables(runs.drop(columns="wsd_trunk"), metrics, bootstrap=50, seed=0)

    def width(out):
        return np.diff(out["metric_laws"]["recall_complex"]["linear"]["ci"]["slope"])[0]

    assert width(clustered) > 1.15 * width(naive)
    assert (
        clustered["curation"]["recall_complex"]["ci"] != naive["curation"]["recall_complex"]["ci"]
    )
    law = clustered["metric_laws"]["recall_complex"]
    assert law["linear"]["determined"] is True and law["linear"]["not_determined"] == []
    assert len(law["by_curation"]["random"]["linear"]["samples"]) == 50


def test_fitted_fixture_is_determined_and_marks_saturating_bounds(fitted):
    assert fitted["loss_law"]["determined"] is True and fitted["loss_law"]["not_determined"] == []
    assert fitted["compute_optimal"]["reason"] is None
    bent = fitted["metric_laws"]["probe_pathway"]["saturating"]
    assert bent["determined"] is True and bent["not_determined"] == []
    straight = fitted["metric_laws"]["recall_complex"]["saturating"]  # linear in log C
    assert straight["determined"] is False and straight["not_determined"][0].startswith("gamma")


def test_isoflop_section_of_a_grid_determines_only_the_budget_that_straddles(fitted):
    """The planted tables are a grid of sizes x crops, not an IsoFLOP design: only the
    budget whose 4 sizes straddle its optimum pins N* down (its vertex is an interior
    minimum in at least 97.5% of the resamples); the budgets with 3 sizes near one edge do
    not, and one budget gives no exponent."""
    iso = fitted["isoflop"]
    flops = sorted({K_FLOPS * n * d for n in SIZES.values() for d in CROPS})
    assert [b["flops"] for b in iso["budgets"]] == pytest.approx(flops)
    for b in iso["budgets"]:
        assert set(b) >= {"flops", "n_runs", "sizes", "n_opt", "n_opt_ci", "determined", "reason"}
        if len(b["sizes"]) < 3:
            assert not b["determined"] and "distinct model sizes" in b["reason"]
        if b["determined"]:
            assert min(b["sizes"]) < b["n_opt"] < max(b["sizes"]) and b["reason"] is None
            lo, hi = b["n_opt_ci"]
            assert min(b["sizes"]) < lo < b["n_opt"] < hi < max(b["sizes"])
    assert [len(b["sizes"]) for b in iso["budgets"] if b["determined"]] == [4]
    assert not iso["determined"] and "needs 2" in iso["reason"]


# ------------------------------------------------------------- refused input, skips


def test_one_size_only_is_refused_naming_sizes(tables):
    runs, _ = tables
    one = runs[runs["model"].isin(["cpu-m", "random-init", "pixel-pca"])]
    with pytest.raises(InputError, match="sizes"):
        F.fit_tables(one, None, bootstrap=5)


def test_too_few_runs_are_refused(tables):
    runs, _ = tables
    with pytest.raises(InputError, match="4 runs"):
        F.fit_tables(runs[runs["kind"] == "mae"].iloc[[0, 5, 10, 15]], None, bootstrap=5)


def test_missing_column_is_named(tables):
    runs, metrics = tables
    with pytest.raises(InputError, match="crops_seen"):
        F.fit_tables(runs.drop(columns="crops_seen"), metrics, bootstrap=5)
    with pytest.raises(InputError, match="value"):
        F.fit_tables(runs, metrics.drop(columns="value"), bootstrap=5)


def test_non_positive_loss_is_refused_naming_the_column(tables):
    runs, _ = tables
    bad = runs.copy()
    bad.loc[3, "loss"] = -1.0
    with pytest.raises(InputError, match="loss"):
        F.fit_tables(bad, None, bootstrap=5)


def test_fit_names_a_missing_file(tmp_path):
    missing = tmp_path / "nope.parquet"
    with pytest.raises(InputError, match="nope.parquet"):
        F.fit(missing, None, tmp_path / "out", bootstrap=5)


def test_metric_with_too_few_runs_is_skipped(fitted):
    assert "rare_metric" not in fitted["metric_laws"]
    assert "linear law" in fitted["skipped"]["metric_laws.rare_metric"]


def test_without_metrics_the_metric_sections_are_empty(tables):
    runs, _ = tables
    out = F.fit_tables(runs, None, bootstrap=5)
    assert out["metric_laws"] == {} and out["best_block"] == [] and out["curation"] == {}
    assert list(out["frontier"]) == ["loss"]


# ------------------------------------------------------------------ fit.json, recommend


def test_fit_writes_contract_json(tables, tmp_path):
    runs, metrics = tables
    runs.to_parquet(tmp_path / "runs.parquet")
    metrics.to_parquet(tmp_path / "metrics.parquet")
    out = F.fit(
        tmp_path / "runs.parquet", tmp_path / "metrics.parquet", tmp_path / "fit", bootstrap=20
    )
    text = (tmp_path / "fit" / "fit.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert data == out and tuple(data) == F.FIT_JSON_KEYS
    assert [p.name for p in (tmp_path / "fit").iterdir()] == ["fit.json"]
    for k in ("E", "A", "B", "alpha", "beta"):
        assert isinstance(data["loss_law"][k], float)
        lo, hi = data["loss_law"]["ci"][k]
        assert lo <= hi
    assert {"n_exponent", "d_exponent"} <= set(data["compute_optimal"])
    assert data["loss_law"]["sample_params"] == ["E", "A", "B", "alpha", "beta"]
    assert len(data["loss_law"]["samples"]) == 20 and len(data["loss_law"]["samples"][0]) == 5
    for m in ("recall_complex", "probe_pathway"):
        assert isinstance(data["metric_laws"][m]["holdout_error"], float)
    assert data["inputs"]["sizes"] == list(SIZES)
    assert data["inputs"]["runs"] == 32 and data["inputs"]["bootstrap"] == 20
    assert data["compute_optimal"]["k"] == pytest.approx(K_FLOPS)


def test_fit_without_metrics_draws_the_loss_figures(tables, tmp_path):
    runs, _ = tables
    runs.to_parquet(tmp_path / "runs.parquet")
    out = F.fit(tmp_path / "runs.parquet", None, tmp_path / "fit", bootstrap=10, figures=True)
    assert out["metric_laws"] == {} and out["loss_law"]["determined"] is True
    names = {p.name for p in (tmp_path / "fit" / "figures").iterdir()}
    assert {"loss_vs_compute.png", "loss_vs_compute.svg", "isoflop.png", "holdout.png"} <= names
    assert not any(n.startswith(("metric", "best_block", "block_heatmap")) for n in names)
    svg = (tmp_path / "fit" / "figures" / "loss_vs_compute.svg").read_text()
    assert "loss law L(N, D) per size" in svg


def test_fit_cli_runs_only_with_an_undetermined_law(tables, tmp_path):
    runs, _ = tables
    flat_in_n(runs).to_parquet(tmp_path / "runs.parquet")
    rc, stdout, stderr = run_cli(
        "fit", "--runs", tmp_path / "runs.parquet", "--out", tmp_path / "fit", "--bootstrap", "10"
    )
    assert rc == 0, stderr
    assert "loss law not determined: alpha" in stdout and "N_opt" not in stdout
    data = json.loads((tmp_path / "fit" / "fit.json").read_text())
    law = data["loss_law"]
    assert law["determined"] is False
    assert any(r.startswith("alpha") for r in law["not_determined"]), law["not_determined"]
    co = data["compute_optimal"]
    assert co["n_exponent"] is None and co["d_exponent"] is None
    assert co["ci"] == {"n_exponent": None, "d_exponent": None} and "alpha" in co["reason"]
    rec = F.recommend(data, 1e14)  # no size, no loss prediction: a note, not an error
    assert rec["params"] is None and rec["crops"] is None and rec["predicted_loss"] is None
    assert "loss law not determined: alpha" in rec["note"]
    figures = tmp_path / "fit" / "figures"
    svg = (figures / "loss_vs_compute.svg").read_text()
    assert (figures / "loss_vs_compute.png").is_file() and "loss law L(N, D)" not in svg


def test_recommend_from_fit_json(fitted):
    rec = F.recommend(fitted, 1e14)
    law = laws.LossLaw(*(fitted["loss_law"][k] for k in ("E", "A", "B", "alpha", "beta")))
    n_opt, d_opt = laws.n_opt_d_opt(1e14, law, fitted["compute_optimal"]["k"])
    assert rec["params"] == pytest.approx(float(n_opt)) and rec["crops"] == pytest.approx(
        float(d_opt)
    )
    assert rec["predicted_loss"] == pytest.approx(float(law(n_opt, d_opt)))
    lo, hi = rec["predicted_metric_ci"]
    assert lo <= rec["predicted_metric"] <= hi
    assert rec["predicted_metric"] == pytest.approx(recall(14.0), abs=0.03)
    assert rec["nearest_size"] in SIZES
    with pytest.raises(InputError, match="budget_flops"):
        F.recommend(fitted, -1.0)


def test_fit_cli_without_bootstrap_prints_laws_without_intervals(tables, tmp_path):
    """``--bootstrap 0``: no interval anywhere, and the console says so instead of crashing."""
    runs, metrics = tables
    runs.to_parquet(tmp_path / "runs.parquet")
    metrics.to_parquet(tmp_path / "metrics.parquet")
    rc, stdout, stderr = run_cli(
        "fit",
        "--runs",
        tmp_path / "runs.parquet",
        "--metrics",
        tmp_path / "metrics.parquet",
        "--out",
        tmp_path / "fit",
        "--bootstrap",
        "0",
    )
    assert rc == 0, stderr
    assert "recall_complex: +" in stdout and "(no interval)" in stdout
