"""The demo's checks (a)-(e) on planted tables and fits: each claim holds exactly when its
numbers say so, and a failed claim makes `scaling demo` exit 1 (tests/test_cli.py)."""

import copy

import pandas as pd
import pytest

from scaling.demo import (
    baseline_gap,
    check_loss_law,
    check_rising,
    check_top_budget,
    curation_multiplier,
    law_lines,
)

SIZES = ("cpu-xs", "cpu-s")


def planted(gains: dict[str, float]):
    """Runs at two budgets per size, the top one `gains[size]` above that size's random-init
    (0.20); the low budget 0.01 above. Baselines: random-init per size, handcrafted 0.5."""
    rows, recall = [], {}
    for s in SIZES:
        for budget, gain in ((1e11, 0.01), (1e12, gains[s])):
            rid = f"{s}_phenoprints_f{budget:.0e}"
            rows.append({"run_id": rid, "model": s, "kind": "mae", "budget": budget})
            recall[rid] = 0.20 + gain
        rows.append({"run_id": f"random-init_{s}", "model": s, "kind": "baseline", "budget": 0})
        recall[f"random-init_{s}"] = 0.20
    rows.append({"run_id": "handcrafted", "model": "handcrafted", "kind": "baseline", "budget": 0})
    recall["handcrafted"] = 0.5
    return pd.DataFrame(rows), pd.Series(recall)


def test_top_budget_gain_holds_only_when_every_size_gains_enough():
    assert check_top_budget(*planted({"cpu-xs": 0.08, "cpu-s": 0.051}))[1]
    sentence, holds = check_top_budget(*planted({"cpu-xs": 0.08, "cpu-s": 0.049}))
    assert not holds and "cpu-s_phenoprints_f1e+12 +0.049" in sentence
    # a size without its random-init is not a pass
    runs, recall = planted({"cpu-xs": 0.08, "cpu-s": 0.08})
    assert not check_top_budget(runs, recall.drop("random-init_cpu-s"))[1]


def test_baseline_gap_names_every_baseline_and_whether_the_mae_reached_it():
    text = baseline_gap(*planted({"cpu-xs": 0.08, "cpu-s": 0.05}))
    assert "did not reach the hand-crafted features 0.500 (gap -0.220)" in text
    assert "random-init_cpu-xs 0.200" in text and "handcrafted 0.500" in text
    text = baseline_gap(*planted({"cpu-xs": 0.35, "cpu-s": 0.05}))
    assert "0.550 reached the hand-crafted" in text


FIT = {
    "loss_law": {
        "E": 0.4,
        "A": 3.0,
        "B": 20.0,
        "alpha": 0.3,
        "beta": 0.4,
        "ci": {
            "E": [0.3, 0.5],
            "A": [1, 9],
            "B": [5, 90],
            "alpha": [0.2, 0.5],
            "beta": [0.3, 0.6],
        },
        "holdout_error": 0.02,
        "determined": True,
        "not_determined": [],
    },
    "compute_optimal": {"n_exponent": 0.57, "ci": {"n_exponent": [0.4, 0.7]}},
    "metric_laws": {"recall_complex": {"linear": {"slope": 0.03, "ci": {"slope": [0.01, 0.05]}}}},
    "curation": {
        "recall_complex": {
            "reference": "phenoprints",
            "other": "random",
            "multiplier": 0.6,
            "ci": [0.2, 1.9],
            "at_flops": 3e11,
            "reason": None,
        }
    },
    "isoflop": {
        "budgets": [
            {"flops": 1e12, "n_runs": 4, "n_opt": 4e4, "n_opt_ci": [2e4, 9e4], "determined": True},
            {"flops": 1e11, "n_runs": 4, "determined": False, "reason": "minimum at the edge"},
        ],
        "determined": False,
    },
}


def changed(path: str, value):
    fit = copy.deepcopy(FIT)
    *keys, last = path.split(".")
    d = fit
    for k in keys:
        d = d[k]
    d[last] = value
    return fit


def test_loss_law_check_holds_only_for_a_determined_law_inside_the_range():
    assert check_loss_law(FIT)[1]
    for path, value in [
        ("loss_law.alpha", 0.04),  # the estimate outside (0.05, 2)
        ("loss_law.ci.beta", [0.3, 2.5]),  # the interval reaching past 2
        ("loss_law.holdout_error", 0.051),
        ("loss_law.holdout_error", None),  # no held-out check is not a pass
        ("loss_law.determined", False),
    ]:
        fit = changed(path, value)
        if path == "loss_law.determined":
            fit["loss_law"]["not_determined"] = ["alpha 5 at its search bound 5"]
        sentence, holds = check_loss_law(fit)
        assert not holds, path
    assert "at its search bound" in check_loss_law(fit)[0]


@pytest.mark.parametrize(
    ("slope", "ci", "holds"),
    [(0.03, [0.01, 0.05], True), (0.03, [-0.001, 0.05], False), (-0.01, [-0.02, 0.0], False)],
)
def test_rising_check_needs_the_whole_interval_above_zero(slope, ci, holds):
    fit = changed("metric_laws.recall_complex.linear", {"slope": slope, "ci": {"slope": ci}})
    assert check_rising(fit)[1] is holds


def test_curation_and_law_lines_print_intervals_or_say_not_determined():
    assert "phenoprints curation is worth 0.6x the training compute of random" in (
        curation_multiplier(FIT)
    )
    assert "[0.2, 1.9]" in curation_multiplier(FIT)
    none = changed("curation.recall_complex.multiplier", None)
    none["curation"]["recall_complex"]["reason"] = "random slope is -0.01 <= 0"
    assert "not determined (random slope" in curation_multiplier(none)
    lines = law_lines(FIT)
    assert lines[0].startswith("loss law L = E + A/N^alpha + B/D^beta: E 0.4 [0.3, 0.5]")
    assert "N* 4e+04 [2e+04, 9e+04]" in lines[2] and "not determined (minimum at" in lines[3]
    bad = changed("loss_law.determined", False)
    bad["loss_law"]["not_determined"] = ["alpha 5 at its search bound 5"]
    assert law_lines(bad)[0].startswith("loss law: NOT DETERMINED (alpha 5 at its search bound")
    assert not any("N_opt" in line for line in law_lines(bad))
