"""The report of a ladder (analysis.plots, analysis.report) on tables and a fit.json made
from a planted law: 3 sizes x 2 curations x 3 budgets, plus baseline rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import laws as L
from analysis.plots import best_blocks, plot_all
from analysis.report import (
    findings,
    metric_laws_table,
    recommendation,
    report,
    skipped_reasons,
)
from scaling.errors import InputError

SIZES = (("cpu-s", 2.0e5, 4), ("cpu-m", 1.2e6, 6), ("cpu-l", 3.6e6, 8))
CURATIONS = ("random", "phenoprints")
BUDGETS = (1e12, 4e12, 1.6e13)
K = 7.5  # C = K N D
LOSS = {"E": 0.45, "A": 30.0, "B": 20.0, "alpha": 0.32, "beta": 0.3}
SLOPE, INTERCEPT = 0.04, -0.38  # recall_complex = INTERCEPT + SLOPE log10 C (+ curation)
CURATION_GAIN = {"random": -0.015, "phenoprints": 0.015}
METRICS = {  # metric: (share of the recall slope, level offset)
    "recall_complex": (1.0, 0.0),
    "recall_pathway": (0.6, -0.05),
    "consistency_ks": (1.5, 0.1),
    "probe_perturbation_val": (2.0, 0.05),
    "probe_pathway_val": (1.2, 0.1),
}
PEAK = 0.7  # blocks peak near this share of depth: b* = 3 of 4, 4 of 6, 6 of 8


def _loss(n, d):
    return LOSS["E"] + LOSS["A"] / n ** LOSS["alpha"] + LOSS["B"] / d ** LOSS["beta"]


def planted_tables(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """runs and metrics tables from the planted laws, with small seeded noise."""
    rng = np.random.default_rng(seed)
    runs, metrics = [], []
    for model, n, depth in SIZES:
        for cur in CURATIONS:
            for c in BUDGETS:
                run_id = f"{model}-{cur}-{c:.0e}"
                d = c / (K * n)
                runs.append(
                    dict(
                        run_id=run_id,
                        model=model,
                        params=n,
                        curation=cur,
                        crops_seen=d,
                        flops=c,
                        loss=_loss(n, d) * (1 + rng.normal(0, 0.003)),
                        kind="mae",
                        depth=depth,
                    )
                )
                top = INTERCEPT + SLOPE * np.log10(c) + CURATION_GAIN[cur]
                for metric, (share, offset) in METRICS.items():
                    value = offset + 0.1 + share * (top - 0.1) + rng.normal(0, 0.003)
                    for b in range(1, depth + 1):
                        drop = 0.25 * (b / depth - PEAK) ** 2
                        metrics.append(
                            dict(run_id=run_id, block=b, metric=metric, value=value - drop)
                        )
    for model, n, depth in SIZES:
        runs.append(
            dict(
                run_id=f"random-init-{model}",
                model=model,
                params=n,
                curation="none",
                crops_seen=0.0,
                flops=0.0,
                loss=np.nan,
                kind="baseline",
                depth=depth,
            )
        )
        for b in range(1, depth + 1):
            for metric in METRICS:
                metrics.append(
                    dict(
                        run_id=f"random-init-{model}", block=b, metric=metric, value=0.1 + 0.002 * b
                    )
                )
    for name, level in (("handcrafted", 0.16), ("pixel-pca", 0.12)):
        runs.append(
            dict(
                run_id=name,
                model=name,
                params=np.nan,
                curation="none",
                crops_seen=np.nan,
                flops=np.nan,
                loss=np.nan,
                kind="baseline",
                depth=np.nan,
            )
        )
        metrics += [dict(run_id=name, block=0, metric=m, value=level) for m in METRICS]
    return pd.DataFrame(runs), pd.DataFrame(metrics)


def _linear(intercept, slope, spread=0.1):
    return {
        "intercept": intercept,
        "slope": slope,
        "ci": {
            "intercept": [intercept - 0.1, intercept + 0.1],
            "slope": [slope * (1 - spread), slope * (1 + spread)],
        },
    }


def planted_fit(runs: pd.DataFrame) -> dict:
    """A fit.json as analysis.fit writes it, holding the planted laws."""
    mae = runs[runs["kind"] == "mae"]
    held = mae[mae["flops"] == max(BUDGETS)]
    loss_ci = {p: [v * 0.95, v * 1.05] for p, v in LOSS.items()}
    rng = np.random.default_rng(1)  # bootstrap parameter sets, as analysis.fit may store
    samples = [
        [v * (1 + 0.01 * z) for v, z in zip(LOSS.values(), rng.normal(size=5), strict=True)]
        for _ in range(40)
    ]
    a, b = LOSS["alpha"], LOSS["beta"]
    laws = {}
    for metric, (share, offset) in METRICS.items():
        if metric.endswith("_val"):
            continue
        icpt = offset + 0.1 + share * (INTERCEPT - 0.1)
        slope = share * SLOPE
        pred = icpt + slope * np.log10(held["flops"])
        actual = pred + share * held["curation"].map(CURATION_GAIN)
        laws[metric] = {
            "n_runs": len(mae),
            "linear": _linear(icpt, slope),
            "saturating": {"skipped": "gamma at its bound"}
            if metric == "consistency_ks"
            else {"m_inf": 0.9, "k": 5.0, "gamma": 0.05, "ci": {"m_inf": [0.8, 1.0]}},
            "holdout_error": 0.004,
            "holdout": {
                "run_ids": list(held["run_id"]),
                "predicted": list(pred),
                "actual": list(actual),
                "saturating_error": 0.006,
            },
            "by_curation": {
                cur: {"linear": _linear(icpt + share * gain, slope), "n_runs": 9}
                for cur, gain in CURATION_GAIN.items()
            },
        }
    return {
        "inputs": {
            "runs": len(mae),
            "sizes": [s[0] for s in SIZES],
            "params": {s[0]: s[1] for s in SIZES},
            "curations": list(CURATIONS),
            "flops_range": [min(BUDGETS), max(BUDGETS)],
            "bootstrap": 200,
            "seed": 0,
        },
        "loss_law": {
            **LOSS,
            "ci": loss_ci,
            "samples": samples,
            "n_runs": len(mae),
            "holdout_error": 0.01,
            "holdout": {
                "run_ids": list(held["run_id"]),
                "predicted": list(held["loss"] * 1.01),
                "actual": list(held["loss"]),
            },
        },
        "compute_optimal": {
            "n_exponent": b / (a + b),
            "d_exponent": a / (a + b),
            "ci": {"n_exponent": [0.4, 0.52], "d_exponent": [0.48, 0.6]},
            "k": K,
        },
        "isoflop": L.isoflop(mae["params"], mae["flops"], mae["loss"], n_boot=100, seed=0),
        "metric_laws": laws,
        "frontier": {
            "loss": [[r.flops, r.loss, r.run_id] for r in mae.sort_values("flops").itertuples()]
        },
        "curation": {
            "recall_complex": {
                "reference": "phenoprints",
                "other": "random",
                "multiplier": 5.6,
                "ci": [3.1, 9.0],
                "at_flops": max(BUDGETS),
                "reason": None,
            }
        },
        "baselines": {
            "handcrafted": {"model": "handcrafted", "recall_complex": 0.16},
            "pixel-pca": {"model": "pixel-pca", "recall_complex": 0.12},
            "random-init-cpu-l": {"model": "cpu-l", "recall_complex": 0.116},
        },
        "skipped": {},
    }


def write_ladder(path: Path, fit: dict | None) -> Path:
    """A ladder folder: runs.parquet, metrics.parquet and (unless None) fit/fit.json."""
    runs, metrics = planted_tables()
    path.mkdir(parents=True, exist_ok=True)
    runs.to_parquet(path / "runs.parquet")
    metrics.to_parquet(path / "metrics.parquet")
    if fit is not None:
        (path / "fit").mkdir()
        (path / "fit" / "fit.json").write_text(json.dumps(fit, allow_nan=False))
    return path


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    runs, _ = planted_tables()
    ladder = write_ladder(tmp_path_factory.mktemp("ladder") / "ladder", planted_fit(runs))
    return ladder, report(ladder)


def test_figures_exist_as_png_and_svg(full):
    _, out = full
    names = {p.stem for p in out["figures"]}
    assert {
        "loss_vs_compute",
        "metric_vs_compute_recall_complex",
        "metrics_vs_compute",
        "best_block_vs_size",
        "block_heatmap_recall_complex",
        "holdout",
        "isoflop",
    } <= names
    for path in out["figures"]:
        assert path.is_file(), path
        head = path.read_bytes()[:512]
        if path.suffix == ".png":
            assert head.startswith(b"\x89PNG\r\n\x1a\n"), path
        else:
            assert path.suffix == ".svg" and b"<svg" in head, path
    assert sorted(p.stem for p in out["figures"] if p.suffix == ".png") == sorted(
        p.stem for p in out["figures"] if p.suffix == ".svg"
    )
    assert not list(out["figures"][0].parent.glob(".*partial"))


def test_html_is_self_contained(full):
    _, out = full
    page = out["html"].read_text()
    assert "data:image/png;base64," in page
    assert page.count("<img") == sum(p.suffix == ".png" for p in out["figures"])
    for bad in ('src="http', "<link", "<script", 'href="http', "url("):
        assert bad not in page, bad


def test_markdown_references_figures(full):
    _, out = full
    md = out["markdown"].read_text()
    for png in (p for p in out["figures"] if p.suffix == ".png"):
        assert f"(figures/{png.name})" in md


def test_recommendation_matches_planted_law(full):
    _, out = full
    budget = 10 * max(BUDGETS)
    a, b = LOSS["alpha"], LOSS["beta"]
    g = (a * LOSS["A"] / (b * LOSS["B"])) ** (1 / (a + b))
    n_opt = g * (budget / K) ** (b / (a + b))
    d_opt = budget / (K * n_opt)
    rec = out["recommendation"]
    assert rec["budget_flops"] == pytest.approx(budget)
    assert rec["n_opt"] == pytest.approx(n_opt, rel=1e-9)
    assert rec["d_opt"] == pytest.approx(d_opt, rel=1e-9)
    assert rec["nearest_size"] == "cpu-l"
    predicted = INTERCEPT + SLOPE * np.log10(budget)
    assert rec["predicted"] == pytest.approx(predicted, rel=1e-9)
    lo, hi = rec["interval"]
    assert lo < predicted < hi and hi - lo < 0.1
    for text in (out["html"].read_text(), out["markdown"].read_text()):
        assert f"N_opt = {n_opt:.3g}" in text
        assert f"D_opt = {d_opt:.3g}" in text
        assert f"{predicted:.3g}" in text


def test_runs_table_has_one_row_per_run(full):
    ladder, out = full
    runs = pd.read_parquet(ladder / "runs.parquet")
    page = out["html"].read_text()
    table = re.search(r'<table id="runs">(.*?)</table>', page, re.S).group(1)
    body = table.split("<tbody>")[1]
    assert body.count("<tr>") == len(runs)
    assert "recall_complex at b*" in table and "map_activity at b*" in table
    for run_id in runs["run_id"]:
        assert f"<td>{run_id}</td>" in body


def test_findings_and_best_block(full):
    ladder, out = full
    lines = out["findings"]
    assert len(lines) == 3
    assert f"rises by {SLOPE:.3g} per 10x" in lines[0]
    assert "5.6x" in lines[1] and "phenoprints" in lines[1].lower()
    assert "cpu-l (8 blocks), peaks at block 6" in lines[2]
    metrics = pd.read_parquet(ladder / "metrics.parquet")
    best = best_blocks(metrics)
    assert best["cpu-m-random-1e+12"] == 4 and best["cpu-s-phenoprints-4e+12"] == 3
    assert best["handcrafted"] == 0
    page = out["html"].read_text()
    assert all(line.split("(")[0].strip() in page for line in lines)
    assert "consistency_ks saturating law: gamma at its bound" in page


def test_isoflop_table_says_not_determined_for_a_grid_of_three_sizes(full):
    """Three sizes a budget (two runs each) leave the parabola's vertex outside the sizes in
    about a third of the resamples: its 95% interval reaches the edge, so no budget is
    determined, and the report says so instead of quoting an N*."""
    ladder, out = full
    iso = json.loads((ladder / "fit" / "fit.json").read_text())["isoflop"]
    assert not iso["determined"] and not any(b["determined"] for b in iso["budgets"])
    assert all("reaches the edge" in b["reason"] for b in iso["budgets"])
    page = out["html"].read_text()
    table = re.search(r'<table id="isoflop">(.*?)</table>', page, re.S).group(1)
    assert table.split("<tbody>")[1].count("<tr>") == len(BUDGETS)
    assert table.count("not determined") == len(BUDGETS) and "N* ∝ C^" not in page


def test_isoflop_table_sentence_and_figure_when_determined(tmp_path):
    """A determined IsoFLOP section (5 sizes around each budget's optimum, from
    ``isoflop_runs``'s design) is drawn: N* per budget in the table and the figure, and
    the exponent's sentence."""
    from tests.test_laws import isoflop_runs

    runs, _ = planted_tables()
    fit = planted_fit(runs)
    N, C, L_ = isoflop_runs(np.linspace(-0.6, 0.6, 5))
    fit["isoflop"] = L.isoflop(N, C, L_, n_boot=100, seed=0)
    assert fit["isoflop"]["determined"]
    ladder = write_ladder(tmp_path / "ladder", fit)
    page = report(ladder)["html"].read_text()
    table = re.search(r'<table id="isoflop">(.*?)</table>', page, re.S).group(1)
    for b in fit["isoflop"]["budgets"]:
        assert f"<td>{b['n_opt']:.3g}</td>" in table
    assert f"N* ∝ C^{fit['isoflop']['n_exponent']:.3g}" in page
    svg = (ladder / "report" / "figures" / "isoflop.svg").read_text()
    assert svg.count("N* = ") >= 1


def test_undetermined_loss_law_is_reported_and_not_drawn(tmp_path):
    runs, _ = planted_tables()
    fit = planted_fit(runs)
    why = "alpha = 0 (95% CI 0 to 0.004) touches its search bound 0 of [0, 5]"
    fit["loss_law"].update(determined=False, not_determined=[why])
    fit["compute_optimal"].update(
        n_exponent=None, d_exponent=None, ci={"n_exponent": None, "d_exponent": None}
    )
    out = report(write_ladder(tmp_path / "ladder", fit))
    page = out["html"].read_text()
    assert f"Loss law not determined: {why}" in page
    assert "N_opt" not in page and "Compute-optimal allocation" not in page
    assert 'id="loss-law"' not in page
    rec = out["recommendation"]
    assert "n_opt" not in rec and any("not determined" in n for n in rec["notes"])
    svg = (tmp_path / "ladder" / "report" / "figures" / "loss_vs_compute.svg").read_text()
    assert "loss law L(N, D) per size" not in svg and "frontier" in svg  # points, no law
    assert "No loss-law curves: the law is not determined" in page


def test_missing_fit_json_names_file(tmp_path):
    ladder = write_ladder(tmp_path / "ladder", None)
    with pytest.raises(InputError, match=r"fit[/\\]fit\.json.*scaling fit --runs"):
        report(ladder)
    assert not (ladder / "report").exists() or not any((ladder / "report").iterdir())


def test_missing_runs_names_file(tmp_path):
    with pytest.raises(InputError, match="runs.parquet"):
        report(tmp_path)


def test_skipped_metric_laws_are_explained(tmp_path):
    runs, _ = planted_tables()
    fit = planted_fit(runs)
    fit["metric_laws"] = {}
    fit["curation"] = {
        "recall_complex": {
            "reference": "phenoprints",
            "other": "random",
            "multiplier": None,
            "ci": None,
            "at_flops": None,
            "reason": "laws not fitted",
        }
    }
    fit["skipped"] = {
        "recall_complex": "only 2 distinct compute values",
        "loss_law": "fewer than 6 runs",
    }
    for key in ("loss_law", "frontier", "baselines"):
        fit.pop(key)
    ladder = write_ladder(tmp_path / "ladder", fit)
    out = report(ladder, budget_flops=1e15)
    page = out["html"].read_text()
    assert "only 2 distinct compute values" in page and "fewer than 6 runs" in page
    assert "laws not fitted" in out["findings"][1]
    assert "n_opt" not in out["recommendation"] and "predicted" not in out["recommendation"]
    names = {p.stem for p in out["figures"]}
    assert "holdout" not in names and "loss_vs_compute" in names
    assert "data:image/png;base64," in page


def test_null_values_are_tolerated():
    runs, metrics = planted_tables()
    fit = planted_fit(runs)
    fit["loss_law"].update(E=None, ci={"E": None, "A": [None, 1.0]})
    fit["metric_laws"]["recall_complex"]["linear"] = {"intercept": None, "slope": None, "ci": None}
    fit["metric_laws"]["recall_pathway"]["by_curation"]["random"] = {"skipped": "2 runs"}
    fit["curation"]["recall_complex"].update(multiplier=None, ci=None, reason="no overlap")
    lines = findings(fit, runs, metrics)
    assert "not fitted" in lines[0] and "no overlap" in lines[1]
    rec = recommendation(fit, runs, metrics)
    assert "n_opt" not in rec and "predicted" not in rec and len(rec["notes"]) == 2
    header, rows = metric_laws_table(fit)
    assert any("random skipped" in " ".join(r) for r in rows)
    assert ("recall_pathway linear law, random only", "2 runs") in skipped_reasons(fit)


def test_plot_all_skips_empty_inputs(tmp_path):
    runs, metrics = planted_tables()
    assert plot_all(runs.iloc[:0], metrics.iloc[:0], {}, tmp_path) == []
    assert findings({}, runs, metrics.iloc[:0])[2].startswith("The best block could not")


def test_report_shows_the_jobs_compute_utilisation(tmp_path):
    """`scaling demo` writes utilisation.json beside the tables; the report quotes it, and
    a ladder without one says nothing about utilisation."""
    runs, _ = planted_tables()
    ladder = write_ladder(tmp_path / "ladder", planted_fit(runs))
    assert "utilisation" not in report(ladder)["markdown"].read_text()
    use = {"flops": 1.23e13, "wall_s": 551.0, "peak": 1.82e11, "share": 0.1226}
    (ladder / "utilisation.json").write_text(json.dumps(use))
    text = report(ladder)["markdown"].read_text()
    assert "1.23e+13 training FLOPs delivered in 551 s, 12.3% of this machine's" in text
    assert "(182 GFLOP/s)" in text
