"""``scaling report DIR``: the report of a ladder, as Markdown and one self-contained HTML.

Reads ``DIR/runs.parquet``, ``DIR/metrics.parquet`` and ``DIR/fit/fit.json`` (from
``scaling fit``) and writes, under ``DIR/report`` (or ``out``)::

    figures/*.png, figures/*.svg   the figures of analysis.plots
    report.md                      references figures/*.png by relative path
    report.html                    one file: images as base64 PNG data URIs, inline CSS

Contents: three findings lines, the figures with captions on how to read them, the
fitted loss law and compute-optimal exponents with their 95% bootstrap intervals, the
IsoFLOP profiles (Chinchilla's approach 2: each budget's loss-minimising size N* and
N* ∝ C^a), the metric laws (slope per decade of compute, held-out error), the runs and
the baselines, a recommendation for a compute budget and every part of the fit that was
skipped, and why. Intervals are trunk-clustered bootstrap intervals (section 4).

A loss law that fit.json marks ``determined: false`` (a parameter or its interval at
its search bound) is reported as "not determined" with its reasons: no law table, no
compute-optimal exponents, no recommended size and no law curve in the figures.

Recommendation (ARCHITECTURE section 4): with C = k N D and the loss law
L = E + A / N^alpha + B / D^beta, N_opt = G (C/k)^(beta/(alpha+beta)) with
G = (alpha A / (beta B))^(1/(alpha+beta)), and D_opt = C / (k N_opt). The predicted
metric is the linear law m = intercept + slope log10(C) at the budget, with the 95%
interval of least-squares lines refitted on runs resampled with replacement (the same
band the figures shade).
"""

from __future__ import annotations

import base64
import html
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import plots
from analysis.fit import METRICS_COLUMNS, RUNS_COLUMNS, read_table
from analysis.plots import ci, finite, label, num, section
from scaling.errors import InputError

HEADLINE = "recall_complex"
MAP_HEADLINE = "map_activity"  # shown beside the headline: phenotypic activity mAP (copairs)
BUDGET_FACTOR = 10.0  # default budget: this many times the largest compute in the ladder
DASH = "—"

CAPTIONS = {
    "loss_vs_compute": (
        "Final validation loss of every trained run against its training compute (log "
        "scale). Colour and marker: model size; filled markers and solid lines: "
        "phenoprints curation, open markers and dashed lines: random. {law} Black steps: "
        "the compute frontier, the "
        "lowest loss reached at or below each compute. Where a size's points flatten above "
        "the frontier, a larger model uses that compute better."
    ),
    "metric_vs_compute_recall_complex": (
        "Complex recall (known-relationship recall on complex pairs, at each run's best "
        "block b*) against training compute. Colour: curation; marker: model size. Lines: "
        "the linear law per curation (recall = intercept + slope log10 C), shaded by its "
        "95% bootstrap interval. Dashed horizontal lines: baselines that need no training "
        "(random-init ViT at its best size and block, raw-pixel PCA, hand-crafted "
        "features). The vertical gap between the curation lines is the curation effect; "
        "the slope is the gain per 10x compute."
    ),
    "metrics_vs_compute": (
        "Every benchmark metric (at b*) against training compute, read like the figure "
        "above: colour is curation, marker is size, lines are the per-curation linear laws "
        "with 95% bootstrap bands, dashed lines are baselines. Higher is better for all."
    ),
    "best_block_vs_size": (
        "Left: the best block b* of every run (chosen on validation probes) against encoder "
        "parameters; grey bars mark each size's last block. Right: b* as a share of depth; "
        "the black line is the mean per size. Points of one size are spread slightly "
        "along x to stay visible. Values below 1 mean an intermediate block embeds biology "
        "better than the last one."
    ),
    "block_heatmap_recall_complex": (
        "Complex recall at every block (columns) of every trained run (rows, by size, "
        "curation, then compute). The orange box marks b*, the block chosen on validation "
        "probes; grey cells are blocks a model does not have."
    ),
    "isoflop": (
        "IsoFLOP profiles (Chinchilla's approach 2): final validation loss against encoder "
        "parameters, one colour per compute budget with at least 3 sizes. Curves: the "
        "parabola of loss in log10 N fitted at that budget, over the trained sizes. Star: "
        "its minimum N*(C), with its 95% trunk-clustered bootstrap interval as a bar, "
        "drawn only where the minimum lies strictly inside the trained sizes; a budget whose "
        "minimum sits at the edge says so in the legend."
    ),
    "holdout": (
        "Held-out check: each law fitted without the largest-compute runs predicts them. "
        "x: what the runs reached; y: the prediction. Points on the dashed diagonal are "
        "exact; the panel states the held-out error."
    ),
}

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.8em}ul.findings{background:#f4f8fb;border-left:4px solid #0072B2;
padding:.8em 1.2em .8em 2em}table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right}th{background:#f2f2f2}
td:first-child,th:first-child{text-align:left}figure{margin:1.2em 0}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#444;margin-top:.3em}.note{color:#555;font-size:.9em}
""".strip()


# --------------------------------------------------------------------------- inputs


def caption(stem: str, fit: dict) -> str:
    """How to read the figure ``stem``."""
    text = CAPTIONS.get(stem, stem.replace("_", " "))
    if stem == "loss_vs_compute":
        stored = len(plots.parameter_samples(section(fit, "loss_law"), plots.LOSS_PARAMS))
        reasons = plots.loss_law_not_determined(fit)
        law = (
            f"No loss-law curves: the law is not determined ({'; '.join(reasons)})."
            if reasons
            else "No loss-law curves: the law was not fitted (see Skipped)."
            if not plots.has_loss_law(fit)
            else "Dotted curves: the fitted loss law for each size as its data grows (C = kND), "
            + (
                "shaded by its 95% bootstrap interval."
                if stored
                else "without a band: fit.json keeps only marginal parameter intervals, whose "
                "corners would overstate the curve's uncertainty (see the loss-law table)."
            )
        )
        text = text.format(law=law)
    elif stem.startswith("metric") and not any(
        plots.has_linear(section(law, "linear")) for law in section(fit, "metric_laws").values()
    ):
        text += " No law lines: no metric law was fitted (see Skipped)."
    return text


def fit_command(ladder: Path) -> str:
    """The command that writes a ladder's fit.json."""
    return f"scaling fit --runs {ladder / 'runs.parquet'} --metrics {ladder / 'metrics.parquet'} --out {ladder / 'fit'}"


def read_fit(path: Path, ladder: Path) -> dict:
    """fit.json as a dict; InputError naming the file (and the command that makes it)."""
    if not path.is_file():
        raise InputError(f"{path}: not found; run `{fit_command(ladder)}` first")
    try:
        fit = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(fit, dict):
        raise InputError(f"{path}: expected a JSON object at the top level")
    return fit


# --------------------------------------------------------------------------- numbers


def fmt(x, digits: int = 3) -> str:
    """A number to ``digits`` significant digits (Python's ``g`` format); a dash for
    missing values."""
    v = num(x)
    return f"{v:.{digits}g}" if np.isfinite(v) else DASH


def fmt_ci(pair, digits: int = 3) -> str:
    """``[lo, hi]`` as "lo to hi", a dash when missing."""
    if not isinstance(pair, list | tuple) or len(pair) != 2 or not finite(*pair):
        return DASH
    return f"{fmt(pair[0], digits)} to {fmt(pair[1], digits)}"


# --------------------------------------------------------------------------- content


def skipped_reasons(fit: dict) -> list[tuple[str, str]]:
    """Every part of the fit that was skipped, as (what, why): fit.json's ``skipped``, the
    per-law and per-curation skips, curation multipliers that could not be estimated, and
    sections absent from fit.json."""
    out = [(str(k), str(v)) for k, v in section(fit, "skipped").items()]
    named = {k for k, _ in out}
    for name in ("loss_law", "compute_optimal", "metric_laws"):
        if not section(fit, name) and name not in named:
            out.append((name, "absent or empty in fit.json"))
    for metric, law in section(fit, "metric_laws").items():
        sat = section(law, "saturating")
        if "skipped" in sat:
            out.append((f"{metric} saturating law", str(sat["skipped"])))
        for cur, entry in section(law, "by_curation").items():
            if isinstance(entry, dict) and "skipped" in entry:
                out.append((f"{metric} linear law, {cur} only", str(entry["skipped"])))
    for metric, entry in section(fit, "curation").items():
        if isinstance(entry, dict) and not finite(entry.get("multiplier")):
            out.append(
                (f"{metric} curation multiplier", str(entry.get("reason") or "not estimated"))
            )
    return out


def _slope_finding(fit: dict) -> str:
    """Finding 1: the headline metric's gain per decade of compute."""
    law = section(fit, "metric_laws", HEADLINE)
    lin = section(law, "linear")
    if not plots.has_linear(lin):
        why = (
            section(fit, "skipped").get(HEADLINE)
            or law.get("skipped")
            or "no linear law in fit.json"
        )
        return f"The {label(HEADLINE)} law was not fitted: {why}."
    interval = fmt_ci(ci(lin, "slope"))
    extra = f"95% CI {interval}; " if interval != DASH else ""
    return (
        f"{label(HEADLINE).capitalize()} {'rises' if num(lin['slope']) >= 0 else 'falls'} by "
        f"{fmt(abs(num(lin['slope'])))} per 10x training "
        f"compute ({extra}linear law over {fmt(law.get('n_runs'))} runs, held-out error "
        f"{fmt(law.get('holdout_error'))})."
    )


def _curation_finding(fit: dict) -> str:
    """Finding 2: the curation effective-compute multiplier on the headline metric."""
    entry = section(fit, "curation", HEADLINE)
    if not entry:
        return "The curation effect was not estimated (no curation section in fit.json)."
    ref, other = entry.get("reference", "phenoprints"), entry.get("other", "random")
    if not finite(entry.get("multiplier")):
        return f"The {ref}-vs-{other} compute multiplier was not estimated: {entry.get('reason') or 'no reason given'}."
    interval = fmt_ci(entry.get("ci"), 2)
    extra = f" (95% CI {interval}x)" if interval != DASH else ""
    at = f" at {fmt(entry.get('at_flops'), 2)} FLOPs" if finite(entry.get("at_flops")) else ""
    return (
        f"{str(ref).capitalize()} curation is worth {fmt(entry['multiplier'], 2)}x the "
        f"training compute of {other} for {label(HEADLINE)}{extra}{at}."
    )


def _block_finding(runs: pd.DataFrame, metrics: pd.DataFrame) -> str:
    """Finding 3: where the best block sits relative to depth."""
    points = plots.run_points(runs, metrics) if not metrics.empty else pd.DataFrame()
    points = points[points["best_block"].notna()] if len(points) else points
    if points.empty:
        return "The best block could not be located: no per-block metrics for trained runs."
    depth = points["depth"] if "depth" in points.columns else None
    if depth is None or depth.isna().any():
        depth = metrics.groupby("run_id")["block"].max().reindex(points.index)
    share = (points["best_block"] / depth).dropna()
    top = points.sort_values(["params", "flops"]).iloc[-1]
    top_depth = int(depth[top.name])
    return (
        f"The best block b* sits at {share.mean():.0%} of depth on average "
        f"(range {share.min():.0%} to {share.max():.0%}); the largest run, {top['model']} "
        f"({top_depth} blocks), peaks at block {int(top['best_block'])}."
    )


def findings(fit: dict, runs: pd.DataFrame, metrics: pd.DataFrame) -> list[str]:
    """The three headline lines of the report: the complex-recall slope per decade of
    compute with its interval, the curation compute multiplier, and the best block vs
    depth. Missing inputs give a line that says what is missing instead."""
    fit = fit if isinstance(fit, dict) else {}
    return [_slope_finding(fit), _curation_finding(fit), _block_finding(runs, metrics)]


def recommendation(
    fit: dict,
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    budget_flops: float | None = None,
    bands=None,
    metric: str = HEADLINE,
) -> dict:
    """What to train for ``budget_flops`` (default: 10x the ladder's largest compute).

    Returns ``budget_flops``, ``k``, ``n_opt``, ``d_opt`` (from the loss law, ARCHITECTURE
    section 4), ``nearest_size`` / ``nearest_params`` (the trained size closest to N_opt
    in log parameters), ``metric``, ``predicted`` and ``interval`` (linear law at the
    budget, 95% bootstrap interval), ``by_curation`` {curation: {predicted, interval}},
    and ``notes`` (why any part is missing)."""
    mae = plots.mae_runs(runs)
    flops = pd.to_numeric(mae.get("flops"), errors="coerce")
    flops = flops[np.isfinite(flops) & (flops > 0)] if flops is not None else pd.Series()
    if budget_flops is None:
        budget_flops = BUDGET_FACTOR * float(flops.max()) if len(flops) else float("nan")
    budget = num(budget_flops)
    rec = {"budget_flops": budget, "metric": metric, "notes": [], "by_curation": {}}
    if not (np.isfinite(budget) and budget > 0):
        rec["notes"].append("No budget: the ladder has no trained run with FLOPs.")
        return rec
    k = plots.compute_k(fit, runs)
    rec["k"] = k
    if plots.has_loss_law(fit):
        law = {p: num(section(fit, "loss_law")[p]) for p in plots.LOSS_PARAMS}
        if law["alpha"] > 0 and law["beta"] > 0 and law["A"] > 0 and law["B"] > 0:
            rec["n_opt"], rec["d_opt"] = plots.compute_optimal(law, k, budget)
            sizes = mae.groupby("model")["params"].max().dropna() if len(mae) else pd.Series()
            sizes = sizes[sizes > 0]
            if len(sizes):
                near = (np.log(sizes) - np.log(rec["n_opt"])).abs().idxmin()
                rec["nearest_size"], rec["nearest_params"] = str(near), float(sizes[near])
        else:
            rec["notes"].append("No compute-optimal size: the loss law has a non-positive term.")
    elif plots.loss_law_not_determined(fit):
        why = "; ".join(plots.loss_law_not_determined(fit))
        rec["notes"].append(f"No recommended size: the loss law is not determined ({why}).")
    else:
        why = section(fit, "skipped").get("loss_law") or "no loss law in fit.json"
        rec["notes"].append(f"No compute-optimal size (loss law not fitted: {why}).")
    bands = bands or plots.default_bands(runs, metrics, fit)
    laws = section(fit, "metric_laws", metric)
    x = np.array([budget])
    if plots.has_linear(section(laws, "linear")):
        rec["predicted"] = float(plots.linear_at(laws["linear"], budget))
        band = bands("linear", (metric, None), x)
        rec["interval"] = [float(band[0][0]), float(band[1][0])] if band else None
    else:
        why = section(fit, "skipped").get(metric) or "no linear law in fit.json"
        rec["notes"].append(f"No {label(metric)} prediction (law not fitted: {why}).")
    for cur, entry in section(laws, "by_curation").items():
        if isinstance(entry, dict) and plots.has_linear(entry.get("linear")):
            band = bands("linear", (metric, cur), x)
            rec["by_curation"][cur] = {
                "predicted": float(plots.linear_at(entry["linear"], budget)),
                "interval": [float(band[0][0]), float(band[1][0])] if band else None,
            }
    return rec


def recommendation_text(rec: dict) -> list[str]:
    """The recommendation as plain sentences."""
    lines = [f"Budget: {fmt(rec['budget_flops'])} training FLOPs."]
    if "n_opt" in rec:
        near = ""
        if "nearest_size" in rec:
            near = f"; the nearest trained size is {rec['nearest_size']} ({fmt(rec['nearest_params'])} parameters)"
        lines.append(
            f"Train a model of N_opt = {fmt(rec['n_opt'])} encoder parameters on "
            f"D_opt = {fmt(rec['d_opt'])} crops (compute-optimal under the loss law, "
            f"C = {fmt(rec['k'])} N D){near}."
        )
    if "predicted" in rec:
        interval = fmt_ci(rec.get("interval"))
        extra = f" (95% bootstrap interval {interval})" if interval != DASH else ""
        lines.append(
            f"Predicted {label(rec['metric'])} at this budget: {fmt(rec['predicted'])}{extra}, "
            "from the linear law over all runs."
        )
    for cur, p in rec["by_curation"].items():
        interval = fmt_ci(p.get("interval"))
        extra = f" ({interval})" if interval != DASH else ""
        lines.append(f"With {cur} curation: {fmt(p['predicted'])}{extra}.")
    lines += list(rec["notes"])
    return lines


def loss_law_table(fit: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the loss-law parameters with their intervals."""
    law = section(fit, "loss_law")
    rows = [[p, fmt(law.get(p), 4), fmt_ci(ci(law, p))] for p in plots.LOSS_PARAMS]
    return ["parameter", "value", "95% bootstrap CI"], rows


def metric_laws_table(fit: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows): per metric, the linear law's slope per decade with its interval,
    the per-curation slopes, the saturating ceiling and the held-out errors."""
    header = [
        "metric",
        "runs",
        "slope per 10x compute",
        "95% CI",
        "slope by curation",
        "saturating m_inf",
        "held-out error (linear)",
        "held-out error (saturating)",
    ]
    rows = []
    for metric, law in section(fit, "metric_laws").items():
        if not isinstance(law, dict):
            continue
        lin, sat = section(law, "linear"), section(law, "saturating")
        by_cur = []
        for cur, entry in section(law, "by_curation").items():
            slope = section(entry, "linear").get("slope") if isinstance(entry, dict) else None
            by_cur.append(f"{cur} {fmt(slope)}" if finite(slope) else f"{cur} skipped")
        sat_text = fmt(sat.get("m_inf"))
        if "skipped" in sat:
            sat_text = f"skipped: {sat['skipped']}"
        elif sat.get("determined") is False:
            sat_text = "not determined: " + "; ".join(map(str, sat.get("not_determined") or []))
        rows.append(
            [
                metric,
                fmt(law.get("n_runs")),
                fmt(lin.get("slope")),
                fmt_ci(ci(lin, "slope")),
                "; ".join(by_cur) or DASH,
                sat_text,
                fmt(law.get("holdout_error")),
                fmt(section(law, "holdout").get("saturating_error")),
            ]
        )
    return header, rows


def isoflop_table(fit: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per IsoFLOP budget of fit.json, with its loss-minimising
    size N* and 95% interval, or why it is not determined."""
    header = [
        "budget (FLOPs)",
        "runs",
        "sizes",
        "N*",
        "95% bootstrap CI",
        "resamples with an interior N*",
    ]
    rows = []
    for b in section(fit, "isoflop").get("budgets") or []:
        if not isinstance(b, dict):
            continue
        n_opt = fmt(b.get("n_opt")) if b.get("determined") else f"not determined: {b.get('reason')}"
        rows.append(
            [
                fmt(b.get("flops")),
                fmt(b.get("n_runs")),
                ", ".join(fmt(n) for n in b.get("sizes") or []) or DASH,
                n_opt,
                fmt_ci(b.get("n_opt_ci")),
                fmt(b.get("n_kept")),
            ]
        )
    return header, rows


def isoflop_text(fit: dict) -> str:
    """One sentence on N* ∝ C^a from the IsoFLOP profiles, beside approach 3's exponent."""
    iso, co = section(fit, "isoflop"), section(fit, "compute_optimal")
    if not iso.get("determined"):
        return f"IsoFLOP exponent not determined: {iso.get('reason') or 'no IsoFLOP section'}."
    interval = fmt_ci(iso.get("n_exponent_ci"))
    extra = f" (95% CI {interval})" if interval != DASH else ""
    text = (
        f"IsoFLOP profiles (approach 2): the loss-minimising size grows as N* ∝ "
        f"C^{fmt(iso['n_exponent'])}{extra} over "
        f"{sum(bool(b.get('determined')) for b in iso.get('budgets') or [])} budgets"
    )
    if finite(co.get("n_exponent")):
        text += f"; the loss law (approach 3) gives C^{fmt(co['n_exponent'])}"
    return text + "."


def runs_table(runs: pd.DataFrame, metrics: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per row of runs.parquet, trained runs first (by params,
    curation, compute), with b* and, at b*, complex recall and phenotypic activity mAP."""
    best = plots.best_blocks(metrics)
    wide = plots.values_at_best(metrics, best)
    recall = wide[HEADLINE] if HEADLINE in wide.columns else pd.Series(dtype=float)
    activity = wide[MAP_HEADLINE] if MAP_HEADLINE in wide.columns else pd.Series(dtype=float)
    table = runs.copy()
    table["_trained"] = table.index.isin(plots.mae_runs(runs).index)
    table = table.sort_values(
        ["_trained", "params", "curation", "flops"], ascending=[False, True, True, True]
    )
    header = list(RUNS_COLUMNS) + ["best block b* / depth", f"{HEADLINE} at b*"]
    header.append(f"{MAP_HEADLINE} at b*")
    rows = []
    for r in table.to_dict("records"):
        b = best.get(r["run_id"])
        depth = r.get("depth")
        block = DASH if b is None else f"{int(b)} / {int(depth)}" if finite(depth) else str(int(b))
        rows.append(
            [str(r["run_id"]), str(r["model"]), fmt(r["params"]), str(r["curation"])]
            + [fmt(r[c]) for c in ("crops_seen", "flops")]
            + [fmt(r["loss"], 4), block, fmt(recall.get(r["run_id"]))]
            + [fmt(activity.get(r["run_id"]))]
        )
    return header, rows


def baselines_table(runs, metrics, fit) -> tuple[list[str], list[list[str]]]:
    """(header, rows): every baseline with its metric values (the reference rows' metrics
    at their best block, fit.json's ``baselines`` where given)."""
    entries = plots.baseline_entries(runs, metrics, fit)
    kinds = {rid: plots.baseline_kind(rid, str(e.get("model", ""))) for rid, e in entries.items()}
    order = {k: i for i, k in enumerate(plots.BASELINE_KINDS)}
    entries = dict(
        sorted(entries.items(), key=lambda kv: (order.get(kinds[kv[0]], len(order)), kv[0]))
    )
    names = [m for m in plots.METRIC_ORDER if any(m in e for e in entries.values())]
    rows = [
        [str(rid), str(e.get("model", "")), kinds[rid]] + [fmt(e.get(m)) for m in names]
        for rid, e in entries.items()
    ]
    return ["baseline", "model", "kind"] + names, rows


def build(ladder, runs, metrics, fit, figures, rec, lines) -> list[tuple]:
    """The report as a list of blocks: ("h1"|"h2"|"p", text), ("list", items, css class),
    ("table", header, rows, id), ("figure", path, caption)."""
    ladder = Path(ladder)
    inputs = section(fit, "inputs")
    mae = plots.mae_runs(runs)
    blocks: list[tuple] = [
        ("h1", f"Scaling report: {ladder.name}"),
        (
            "p",
            f"{len(mae)} trained runs over {mae['model'].nunique()} sizes and "
            f"{mae['curation'].nunique()} curations, {len(runs) - len(mae)} baselines; "
            f"bootstrap resamples: {fmt(inputs.get('bootstrap'))}, seed {fmt(inputs.get('seed'))}.",
        ),
        ("list", lines, "findings"),
        *utilisation_blocks(ladder),
        ("h2", "Recommendation"),
        ("list", recommendation_text(rec), ""),
        ("h2", "Figures"),
    ]
    pngs = [f for f in figures if f.suffix == ".png"]
    if not pngs:
        blocks.append(("p", "No figure could be drawn from these inputs."))
    for path in pngs:
        blocks.append(("figure", path, caption(path.stem, fit)))
    blocks.append(("h2", "Loss law"))
    law = section(fit, "loss_law")
    if plots.loss_law_not_determined(fit):
        why = "; ".join(plots.loss_law_not_determined(fit))
        blocks.append(
            (
                "p",
                f"Loss law not determined: {why}. No law, compute-optimal "
                "exponents or recommended size are drawn from it.",
            )
        )
    elif plots.has_loss_law(fit):
        blocks.append(
            (
                "p",
                f"L(N, D) = E + A / N^alpha + B / D^beta, fitted on {fmt(law.get('n_runs'))} "
                f"runs (N = encoder parameters, D = crops seen); held-out error "
                f"{fmt(law.get('holdout_error'))}.",
            )
        )
        blocks.append(("table", *loss_law_table(fit), "loss-law"))
    else:
        why = section(fit, "skipped").get("loss_law") or "not in fit.json"
        blocks.append(("p", f"Loss law not fitted: {why}."))
    co = section(fit, "compute_optimal")
    if finite(co.get("n_exponent"), co.get("d_exponent")):
        blocks.append(
            (
                "p",
                f"Compute-optimal allocation: N_opt grows as C^{fmt(co['n_exponent'])} "
                f"(95% CI {fmt_ci(ci(co, 'n_exponent'))}) and D_opt as C^{fmt(co['d_exponent'])} "
                f"(95% CI {fmt_ci(ci(co, 'd_exponent'))}), with C = {fmt(plots.compute_k(fit, runs))} N D.",
            )
        )
    blocks.append(("h2", "IsoFLOP profiles"))
    blocks.append(("p", isoflop_text(fit)))
    header, rows = isoflop_table(fit)
    if rows:
        blocks.append(("table", header, rows, "isoflop"))
    blocks.append(("h2", "Metric laws"))
    header, rows = metric_laws_table(fit)
    if rows:
        blocks.append(
            (
                "p",
                "Linear law m = intercept + slope log10(C) per benchmark metric (at b*); the "
                "slope is the gain per 10x training compute. Held-out error: fitted without "
                "the largest-compute runs, predicting them.",
            )
        )
        blocks.append(("table", header, rows, "metric-laws"))
    else:
        blocks.append(("p", "No metric law was fitted (see Skipped below)."))
    blocks.append(("h2", "Runs"))
    blocks.append(("table", *runs_table(runs, metrics), "runs"))
    blocks.append(("h2", "Baselines"))
    header, rows = baselines_table(runs, metrics, fit)
    blocks.append(
        ("table", header, rows, "baselines") if rows else ("p", "No baselines in this ladder.")
    )
    blocks.append(("h2", "Skipped"))
    skipped = [f"{what}: {why}" for what, why in skipped_reasons(fit)]
    blocks.append(("list", skipped, "") if skipped else ("p", "Nothing was skipped."))
    return blocks


def utilisation_blocks(ladder: Path) -> list[tuple]:
    """The job's compute utilisation (ARCHITECTURE section 4) when the job that made the
    ladder measured it (``utilisation.json``, written by ``scaling demo``)."""
    path = ladder / "utilisation.json"
    if not path.is_file():
        return []
    u = json.loads(path.read_text())
    return [
        (
            "p",
            f"Compute utilisation of the job: {fmt(u['flops'])} training FLOPs delivered in "
            f"{u['wall_s']:.0f} s, {u['share']:.1%} of this machine's float32 GEMM peak "
            f"({u['peak'] / 1e9:.0f} GFLOP/s), measured in the same job.",
        )
    ]


# --------------------------------------------------------------------------- rendering


def _md(text) -> str:
    """Plain text for Markdown: asterisks escaped (``b*`` must not start emphasis)."""
    return str(text).replace("*", "\\*")


def _md_cell(text) -> str:
    """A Markdown table cell (asterisks and pipes escaped)."""
    return _md(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks, out_dir: Path) -> str:
    """Render the blocks as Markdown; figures by path relative to ``out_dir``."""
    parts = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            parts.append(f"# {_md(block[1])}")
        elif kind == "h2":
            parts.append(f"## {_md(block[1])}")
        elif kind == "p":
            parts.append(_md(block[1]))
        elif kind == "list":
            parts.append("\n".join(f"- {_md(item)}" for item in block[1]))
        elif kind == "table":
            header, rows = block[1], block[2]
            lines = ["| " + " | ".join(map(_md_cell, header)) + " |"]
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows]
            parts.append("\n".join(lines))
        elif kind == "figure":
            rel = Path(os.path.relpath(block[1], out_dir)).as_posix()
            parts.append(f"![{block[1].stem}]({rel})\n\n*{_md(block[2])}*")
    return "\n\n".join(parts) + "\n"


def to_html(blocks, title: str) -> str:
    """Render the blocks as one self-contained HTML page: inline CSS, figures embedded as
    base64 PNG data URIs, no external resource."""
    esc = html.escape
    body = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "p"):
            body.append(f"<{kind}>{esc(block[1])}</{kind}>")
        elif kind == "list":
            cls = f' class="{block[2]}"' if block[2] else ""
            items = "".join(f"<li>{esc(i)}</li>" for i in block[1])
            body.append(f"<ul{cls}>{items}</ul>")
        elif kind == "table":
            head = "".join(f"<th>{esc(h)}</th>" for h in block[1])
            rows = "".join(
                "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>\n" for row in block[2]
            )
            body.append(
                f'<table id="{block[3]}"><thead><tr>{head}</tr></thead>\n<tbody>\n{rows}</tbody></table>'
            )
        elif kind == "figure":
            data = base64.b64encode(Path(block[1]).read_bytes()).decode("ascii")
            body.append(
                f'<figure><img alt="{esc(block[1].stem)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{esc(block[2])}</figcaption></figure>"
            )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a temporary file in the same folder, then
    ``os.replace``)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def report(ladder_dir, out=None, budget_flops: float | None = None) -> dict:
    """Write the report of the ladder in ``ladder_dir`` to ``out`` (default
    ``ladder_dir/report``): ``figures/``, ``report.md`` and ``report.html``.

    Returns ``{"markdown", "html", "figures", "findings", "recommendation",
    "skipped"}``. Raises InputError naming the file when an input is missing or bad."""
    ladder = Path(ladder_dir)
    runs = read_table(ladder / "runs.parquet", RUNS_COLUMNS)
    metrics = read_table(ladder / "metrics.parquet", METRICS_COLUMNS)
    fit = read_fit(ladder / "fit" / "fit.json", ladder)
    out_dir = Path(out) if out is not None else ladder / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    bands = plots.default_bands(runs, metrics, fit)
    figures = plots.plot_all(runs, metrics, fit, out_dir / "figures", bands=bands)
    rec = recommendation(fit, runs, metrics, budget_flops, bands)
    lines = findings(fit, runs, metrics)
    blocks = build(ladder, runs, metrics, fit, figures, rec, lines)
    md = write_text(out_dir / "report.md", to_markdown(blocks, out_dir))
    page = write_text(out_dir / "report.html", to_html(blocks, f"Scaling report: {ladder.name}"))
    return {
        "markdown": md,
        "html": page,
        "figures": figures,
        "findings": lines,
        "recommendation": rec,
        "skipped": skipped_reasons(fit),
    }
