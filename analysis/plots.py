"""Figures of a scaling ladder: loss and benchmark metrics against training compute, the
best block, per-block heat maps and held-out checks of the fitted laws.

Inputs are the ladder tables (``runs.parquet``, ``metrics.parquet``; ARCHITECTURE
section 6) and the fits (``fit.json``, written by ``analysis.fit``). Every figure is
written as PNG (150 dpi) and SVG, each file atomically; a figure whose inputs are
missing is skipped, never drawn empty.

Definitions used here (ARCHITECTURE section 4):

- Training compute C = training FLOPs; data D = crops seen; N = encoder parameters.
- Loss law L(N, D) = E + A / N^alpha + B / D^beta; along a size's compute axis
  D = C / (k N), with k from ``compute_optimal.k`` (C = k N D).
- Linear metric law m(C) = intercept + slope * log10(C).
- A run's best block b* = the argmax over blocks of the mean of its validation metrics
  (``*_val``), ties to the lower block; a run's metric value is read at b*.
- Bands are 95% trunk-clustered bootstrap intervals: resamples draw WSD trunks (a run's
  ``wsd_trunk``, else the run itself), all runs of a drawn trunk together.
- A loss law marked ``determined: false`` in fit.json is not drawn (its points are).
- IsoFLOP profile (Chinchilla's approach 2): at each compute budget, the parabola of loss
  in log10 N from fit.json's ``isoflop`` and its vertex N*(C).

The metrics table may be None (``scaling fit`` without ``--metrics``): the loss figures
are drawn, the metric ones skipped.

Colours follow the Okabe-Ito palette (safe for colour-blind readers): one colour and one
marker shape per model size, one colour and line style per curation, used the same way
in every figure.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.ticker import (  # noqa: E402
    LogFormatterSciNotation,
    LogLocator,
    MaxNLocator,
    NullFormatter,
)

from analysis import laws  # noqa: E402
from analysis.fit import METRICS_COLUMNS, trunk_groups  # noqa: E402

DPI = 150
VAL_SUFFIX = "_val"
METRIC_ORDER = (
    "recall_complex",
    "recall_pathway",
    "map_activity",
    "map_consistency_complex",
    "map_consistency_pathway",
    "consistency_ks",
    "consistency_cvm",
    "consistency_fraction_significant",
    "probe_perturbation",
    "probe_pathway",
    "compound_gene_ap",
    "compound_gene_z",
)
METRIC_LABELS = {
    "recall_complex": "complex recall",
    "recall_pathway": "pathway recall",
    "map_activity": "phenotypic activity (mAP)",
    "map_consistency_complex": "complex consistency (mAP)",
    "map_consistency_pathway": "pathway consistency (mAP)",
    "consistency_ks": "replicate consistency (KS)",
    "consistency_cvm": "replicate consistency (CvM)",
    "consistency_fraction_significant": "share of consistent perturbations",
    "probe_perturbation": "perturbation probe (bal. acc.)",
    "probe_pathway": "pathway probe (bal. acc.)",
    "compound_gene_ap": "compound-gene AP",
    "compound_gene_z": "compound-gene AP z-score",
}
HEATMAP_METRICS = ("recall_complex",)
BASELINE_KINDS = ("random-init", "pixel-pca", "handcrafted")
BAND_LABEL = "95% bootstrap interval"

# Okabe-Ito: sizes and curations get disjoint colours (yellow left out: too pale on white).
SIZE_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#000000", "#888888", "#5A3E85")
SIZE_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
CURATION_STYLE = {
    "phenoprints": ("#D55E00", "-"),
    "random": ("#56B4E9", "--"),
}
EXTRA_CURATION_STYLE = (("#009E73", "-."), ("#CC79A7", ":"), ("#E69F00", (0, (5, 1))))
BASELINE_STYLE = {
    "random-init": ("#444444", (0, (6, 2))),
    "pixel-pca": ("#777777", (0, (1, 1.5))),
    "handcrafted": ("#000000", (0, (4, 1.5, 1, 1.5))),
}
RC = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.fonttype": "none",
    "svg.hashsalt": "scaling-report",
}

# bands(law, key, x) -> (lo, hi) or None. law "loss": key = N (params), x = training FLOPs;
# law "linear": key = (metric, curation or None), x = training FLOPs.
Bands = Callable[[str, object, np.ndarray], "tuple[np.ndarray, np.ndarray] | None"]


# --------------------------------------------------------------------------- numbers


def num(x) -> float:
    """``x`` as a float; None, text and other non-numbers become NaN (fit.json writes NaN
    as null)."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def finite(*xs) -> bool:
    """True when every value is a finite number."""
    return all(np.isfinite(num(x)) for x in xs)


def ci(section: dict | None, name: str) -> tuple[float, float] | None:
    """The ``[lo, hi]`` interval of ``name`` in ``section["ci"]``, or None when it is
    absent or not finite."""
    pair = ((section or {}).get("ci") or {}).get(name)
    if not isinstance(pair, list | tuple) or len(pair) != 2 or not finite(*pair):
        return None
    return num(pair[0]), num(pair[1])


def section(fit: dict, *keys) -> dict:
    """``fit[k1][k2]...`` when every level is a dict, else an empty dict."""
    node = fit
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


# --------------------------------------------------------------------------- laws

LOSS_PARAMS = ("E", "A", "B", "alpha", "beta")


def has_loss_law(fit: dict) -> bool:
    """True when fit.json holds finite loss-law parameters of a law that is not marked
    ``determined: false`` (a law without the key counts as determined)."""
    law = section(fit, "loss_law")
    return finite(*(law.get(p) for p in LOSS_PARAMS)) and law.get("determined") is not False


def loss_law_not_determined(fit: dict) -> list[str]:
    """Why fit.json's loss law is not determined (one line a parameter); empty when it is
    determined or absent."""
    law = section(fit, "loss_law")
    if law.get("determined") is not False:
        return []
    return [str(r) for r in law.get("not_determined") or []] or ["no reason given"]


def loss_at(law: dict, n, d):
    """L(N, D) = E + A / N^alpha + B / D^beta."""
    n, d = np.asarray(n, float), np.asarray(d, float)
    return law["E"] + law["A"] / n ** law["alpha"] + law["B"] / d ** law["beta"]


def linear_at(law: dict, c):
    """m(C) = intercept + slope * log10(C)."""
    return num(law["intercept"]) + num(law["slope"]) * np.log10(np.asarray(c, float))


def has_linear(law: dict | None) -> bool:
    """True when ``law`` is a linear law with finite intercept and slope."""
    return isinstance(law, dict) and finite(law.get("intercept"), law.get("slope"))


def compute_k(fit: dict, runs: pd.DataFrame) -> float:
    """k in C = k N D: fit.json's ``compute_optimal.k``, else the median of
    flops / (params * crops_seen) over trained runs, else 6."""
    k = num(section(fit, "compute_optimal").get("k"))
    if np.isfinite(k) and k > 0:
        return k
    mae = mae_runs(runs)
    if {"flops", "params", "crops_seen"} <= set(mae.columns) and len(mae):
        ratio = mae["flops"] / (mae["params"] * mae["crops_seen"])
        ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
        if len(ratio):
            return float(ratio.median())
    return 6.0


def size_k(runs: pd.DataFrame) -> dict[float, float]:
    """Each size's own k = flops / (params * crops_seen) (median over its runs), keyed by
    params: the cost of a crop is not proportional to N (the decoder, attention), so a
    size's loss curve against compute uses its own k."""
    mae = mae_runs(runs)
    if not {"flops", "params", "crops_seen"} <= set(mae.columns) or not len(mae):
        return {}
    ratio = mae["flops"] / (mae["params"] * mae["crops_seen"])
    ok = np.isfinite(ratio) & (ratio > 0)
    return {float(n): float(v) for n, v in ratio[ok].groupby(mae["params"][ok]).median().items()}


def compute_optimal(law: dict, k: float, budget: float) -> tuple[float, float]:
    """(N_opt, D_opt) at compute ``budget`` under the loss law with C = k N D:
    N_opt = G (C/k)^(beta/(alpha+beta)), G = (alpha A / (beta B))^(1/(alpha+beta)),
    D_opt = C / (k N_opt)."""
    a, b = law["alpha"], law["beta"]
    g = (a * law["A"] / (b * law["B"])) ** (1.0 / (a + b))
    n_opt = g * (budget / k) ** (b / (a + b))
    return float(n_opt), float(budget / (k * n_opt))


# --------------------------------------------------------------------------- tables


def as_metrics(metrics: pd.DataFrame | None) -> pd.DataFrame:
    """The metrics table, or an empty one with its columns when None (no ``--metrics``)."""
    return pd.DataFrame(columns=list(METRICS_COLUMNS)) if metrics is None else metrics


def mae_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Trained MAE runs: ``kind == "mae"`` when the column exists, else rows with positive
    finite training FLOPs."""
    if "kind" in runs.columns:
        return runs[runs["kind"].astype(str) == "mae"]
    flops = pd.to_numeric(runs.get("flops"), errors="coerce")
    return runs[np.isfinite(flops) & (flops > 0)]


def baseline_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Reference rows that are not trained MAE runs (random-init, handcrafted, pixel-pca)."""
    return runs[~runs.index.isin(mae_runs(runs).index)]


def baseline_kind(run_id: str, model: str = "") -> str:
    """The baseline family of a reference row: ``random-init``, ``handcrafted``,
    ``pixel-pca`` (matched in its run_id or model), else its run_id."""
    text = f"{run_id} {model}".lower()
    if "random" in text:
        return "random-init"
    if "pca" in text:
        return "pixel-pca"
    if "handcraft" in text or "cellprofiler" in text:
        return "handcrafted"
    return str(run_id)


def best_blocks(metrics: pd.DataFrame) -> pd.Series:
    """b* per run (Series indexed by run_id): argmax over blocks of the mean of the run's
    ``*_val`` metrics, ties to the lower block; a run without validation metrics gets its
    last block."""
    metrics = as_metrics(metrics)
    if metrics.empty:
        return pd.Series(dtype="int64", name="block")
    val = metrics[metrics["metric"].astype(str).str.endswith(VAL_SUFFIX)]
    score = val.groupby(["run_id", "block"])["value"].mean().reset_index()
    score = score.sort_values(["run_id", "value", "block"], ascending=[True, False, True])
    best = score.drop_duplicates("run_id").set_index("run_id")["block"]
    last = metrics.groupby("run_id")["block"].max()
    return best.reindex(last.index).fillna(last).astype("int64").rename("block")


def values_at_best(metrics: pd.DataFrame, best: pd.Series | None = None) -> pd.DataFrame:
    """Wide table run_id x metric of each run's values at its best block b*."""
    metrics = as_metrics(metrics)
    if metrics.empty:
        return pd.DataFrame()
    best = best_blocks(metrics) if best is None else best
    at = metrics[metrics["block"].to_numpy() == best.reindex(metrics["run_id"]).to_numpy()]
    return at.pivot_table(index="run_id", columns="metric", values="value", aggfunc="mean")


def run_points(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Trained runs with finite FLOPs joined to their b* and metric values at b* (one
    column per metric; none when ``metrics`` is None or empty)."""
    mae = mae_runs(runs)
    mae = mae[np.isfinite(pd.to_numeric(mae["flops"], errors="coerce"))]
    mae = mae[mae["flops"] > 0].set_index("run_id", drop=False).rename_axis(None)
    best = best_blocks(metrics)
    wide = values_at_best(metrics, best)
    mae = mae.drop(columns=[c for c in ("best_block", *wide.columns) if c in mae.columns])
    out = mae.join(best.rename("best_block"), how="left")
    return out.join(wide, how="left")


def size_order(runs: pd.DataFrame, fit: dict) -> list[str]:
    """Model size names from small to large (fit.json's ``inputs.sizes``, then any other
    trained size by parameters)."""
    sizes = [str(s) for s in section(fit, "inputs").get("sizes") or []]
    mae = mae_runs(runs)
    if "params" in mae.columns and len(mae):
        by_n = mae.groupby("model")["params"].max().sort_values()
        sizes += [str(m) for m in by_n.index if str(m) not in sizes]
    return sizes


def metric_list(fit: dict, metrics: pd.DataFrame) -> list[str]:
    """Benchmark metrics to plot: those with a fitted law or present in the metrics table
    (validation probes excluded), in the canonical order."""
    names = set(section(fit, "metric_laws"))
    metrics = as_metrics(metrics)
    if not metrics.empty:
        names |= set(metrics["metric"].astype(str).unique())
    names = {m for m in names if not m.endswith(VAL_SUFFIX)}
    order = [m for m in METRIC_ORDER if m in names]
    return order + sorted(names - set(order))


def baseline_entries(runs: pd.DataFrame, metrics: pd.DataFrame, fit: dict) -> dict:
    """{baseline run_id: {"model": str, metric: value}}: the reference rows' metrics at
    their best block, updated with fit.json's ``baselines`` (its values win)."""
    entries: dict[str, dict] = {}
    metrics = as_metrics(metrics)
    base = baseline_runs(runs)
    if not metrics.empty and len(base):
        wide = values_at_best(metrics[metrics["run_id"].isin(base["run_id"])])
        models = base.set_index("run_id")["model"].astype(str)
        for run_id, vals in wide.iterrows():
            values = {m: v for m, v in vals.items() if np.isfinite(num(v))}
            entries[str(run_id)] = {"model": models.get(run_id, ""), **values}
    for run_id, entry in section(fit, "baselines").items():
        if isinstance(entry, dict):
            entries.setdefault(str(run_id), {}).update(entry)
    return entries


def baseline_values(runs: pd.DataFrame, metrics: pd.DataFrame, fit: dict) -> dict:
    """{baseline kind: {metric: value}} from :func:`baseline_entries`; ``random-init``
    keeps the best value over sizes."""
    out: dict[str, dict[str, float]] = {}
    for run_id, entry in baseline_entries(runs, metrics, fit).items():
        slot = out.setdefault(baseline_kind(run_id, str(entry.get("model", ""))), {})
        for metric, value in entry.items():
            v = num(value)
            if metric != "model" and np.isfinite(v):
                slot[metric] = max(v, slot.get(metric, -np.inf))
    return out


# --------------------------------------------------------------------------- bands


def bootstrap_lines(x, y, n_boot: int = 400, seed: int = 0, groups=None) -> np.ndarray:
    """(intercept, slope) of least-squares lines y = a + b x on ``n_boot`` trunk-clustered
    resamples of the points (``laws.cluster_resamples``; groups: (n,) trunk labels, None:
    every point alone); x, y: (n,), non-finite points dropped. Returns (n_kept, 2);
    degenerate resamples (one distinct x) are dropped."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    groups = laws.check_groups(groups, keep.size)[keep]
    x, y = x[keep], y[keep]
    if len(np.unique(x)) < 2:
        return np.empty((0, 2))
    intercept, slope = laws.linear_batch(x, y, laws.cluster_resamples(groups, n_boot, seed))
    ok = np.isfinite(slope)
    return np.column_stack([intercept[ok], slope[ok]])


def parameter_samples(law: dict, names) -> np.ndarray:
    """Bootstrap parameter sets stored with a law (``law["samples"]``: a list of lists in
    the order of ``names``, or of dicts), as an (n, len(names)) array; empty when absent."""
    rows = []
    for sample in law.get("samples") or [] if isinstance(law, dict) else []:
        values = [sample.get(n) for n in names] if isinstance(sample, dict) else sample
        if isinstance(values, list | tuple) and len(values) == len(names) and finite(*values):
            rows.append([num(v) for v in values])
    return np.array(rows, float).reshape(-1, len(names))


def percentile_band(curves: np.ndarray, min_curves: int = 20):
    """Pointwise 2.5 and 97.5 percentiles of (n, len(x)) curves; None when too few."""
    curves = curves[np.isfinite(curves).all(axis=1)] if len(curves) else curves
    if len(curves) < min_curves:
        return None
    return np.percentile(curves, 2.5, axis=0), np.percentile(curves, 97.5, axis=0)


def default_bands(runs: pd.DataFrame, metrics: pd.DataFrame, fit: dict, n_boot: int = 400):
    """The band callback used when none is given: pointwise 95% intervals of the law's
    curve over bootstrap resamples of the runs.

    - Bootstrap parameter sets stored in fit.json (``samples`` beside a law's parameters)
      are used when present.
    - Otherwise, ``linear``: least-squares lines refitted on trunk-clustered resamples
      of the runs (trained runs, metric at b*, one curation or all; seeded with
      fit.json's seed), which is how the fit's bootstrap resamples too.
    - Otherwise, ``loss``: no band. fit.json keeps only marginal parameter intervals,
      and because the loss law's parameters are strongly correlated, the envelope of
      their corners is many times wider than the real interval of the curve; refitting
      the law here would duplicate ``analysis.fit``.
    """
    inputs = section(fit, "inputs")
    seed = int(num(inputs.get("seed"))) if finite(inputs.get("seed")) else 0
    metrics = as_metrics(metrics)
    points = run_points(runs, metrics) if not metrics.empty else pd.DataFrame()
    cache: dict = {}

    def line_samples(key) -> np.ndarray:
        metric, curation = key
        laws = section(fit, "metric_laws", metric)
        law = (
            laws.get("linear")
            if curation is None
            else section(laws, "by_curation", curation).get("linear")
        )
        stored = parameter_samples(law if isinstance(law, dict) else {}, ("intercept", "slope"))
        if len(stored) or points.empty or metric not in points.columns:
            return stored
        sub = points if curation is None else points[points["curation"] == curation]
        x = np.log10(sub["flops"].to_numpy(float))
        return bootstrap_lines(x, sub[metric], n_boot, seed, trunk_groups(sub))

    def linear(key, x):
        if key not in cache:
            cache[key] = line_samples(key)
        lines = cache[key]
        return percentile_band(lines[:, :1] + lines[:, 1:] * np.log10(x)[None, :])

    per_size = size_k(runs)

    def loss(n, x):
        samples = parameter_samples(section(fit, "loss_law"), LOSS_PARAMS)
        if not len(samples) or not has_loss_law(fit):
            return None
        d = x / (per_size.get(float(n), compute_k(fit, runs)) * n)
        return percentile_band(
            np.array([loss_at(dict(zip(LOSS_PARAMS, s, strict=True)), n, d) for s in samples])
        )

    def bands(law, key, x):
        x = np.asarray(x, float)
        return linear(key, x) if law == "linear" else loss(key, x) if law == "loss" else None

    return bands


# --------------------------------------------------------------------------- styling


def size_styles(sizes: list[str]) -> dict[str, tuple[str, str]]:
    """{size: (colour, marker)}, small to large."""
    return {
        s: (SIZE_COLOURS[i % len(SIZE_COLOURS)], SIZE_MARKERS[i % len(SIZE_MARKERS)])
        for i, s in enumerate(sizes)
    }


def curation_styles(curations) -> dict[str, tuple[str, object]]:
    """{curation: (colour, line style)}; phenoprints and random have fixed styles."""
    out, extra = {}, iter(itertools.cycle(EXTRA_CURATION_STYLE))
    for c in sorted({str(c) for c in curations}, key=lambda c: (c not in CURATION_STYLE, c)):
        out[c] = CURATION_STYLE.get(c) or next(extra)
    return out


def label(metric: str) -> str:
    """Axis label of a metric."""
    return METRIC_LABELS.get(metric, metric.replace("_", " "))


def compute_grid(flops, pad: float = 1.6, n: int = 120) -> np.ndarray:
    """Log-spaced training FLOPs spanning the runs, padded by ``pad`` each side."""
    flops = np.asarray(flops, float)
    flops = flops[np.isfinite(flops) & (flops > 0)]
    return np.geomspace(flops.min() / pad, flops.max() * pad, n)


def legend_right(ax, handles, title=None):
    """A legend outside the axes, to the right, so it never covers data."""
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        frameon=False,
        title=title,
    )


def log_x(ax, lo: float, hi: float) -> None:
    """Log x axis over [lo, hi]: labels at powers of ten, plus at 2x and 5x (or 3x) when
    the range holds too few powers of ten to read values; no crowded minor labels."""
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    powers = np.floor(np.log10(hi)) - np.ceil(np.log10(lo)) + 1
    if powers < 2:
        subs = (1.0, 2.0, 5.0) if np.log10(hi / lo) < 1.0 else (1.0, 3.0)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
        ax.xaxis.set_major_formatter(LogFormatterSciNotation(labelOnlyBase=False))
    ax.xaxis.set_minor_formatter(NullFormatter())


def save(fig, out_dir: Path, name: str) -> list[Path]:
    """Write ``fig`` as ``name.png`` (150 dpi) and ``name.svg`` in ``out_dir``, each via a
    temporary file in the same folder and ``os.replace``; close the figure."""
    paths = []
    try:
        # the tight box (legends outside the axes included) is measured once for both
        fig.draw_without_rendering()
        box = fig.get_tightbbox().padded(0.1)
        for ext in ("png", "svg"):
            path = out_dir / f"{name}.{ext}"
            tmp = out_dir / f".{name}.{uuid.uuid4().hex[:8]}.{ext}.partial"
            try:
                fig.savefig(tmp, format=ext, dpi=DPI, bbox_inches=box)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            paths.append(path)
    finally:
        plt.close(fig)
    return paths


# --------------------------------------------------------------------------- figures


def plot_loss_vs_compute(runs, fit, out_dir: Path, bands: Bands) -> list[Path]:
    """Figure 1, ``loss_vs_compute``: final validation loss vs training FLOPs, one colour
    and marker per size (filled: phenoprints, open: other curations; points joined per
    size and curation), the loss law along each size's compute axis with its band, and
    the frontier (lowest loss reached at or below each compute) as a step line."""
    mae = mae_runs(runs)
    mae = mae[np.isfinite(pd.to_numeric(mae["flops"], errors="coerce"))]
    mae = mae[(mae["flops"] > 0) & np.isfinite(pd.to_numeric(mae["loss"], errors="coerce"))]
    if mae.empty:
        return []
    sizes = size_order(mae, fit)
    s_style, c_style = size_styles(sizes), curation_styles(mae["curation"].unique())
    fig, ax = plt.subplots(figsize=(7.6, 4.6))
    for (model, cur), grp in mae.sort_values("flops").groupby(["model", "curation"]):
        colour, marker = s_style[str(model)]
        ax.plot(
            grp["flops"],
            grp["loss"],
            color=colour,
            ls=c_style[str(cur)][1],
            marker=marker,
            ms=6,
            mfc=colour if cur == "phenoprints" else "white",
            lw=1.2,
            zorder=3,
        )
    handles = [
        Line2D([], [], color=s_style[s][0], marker=s_style[s][1], ls="", label=s) for s in sizes
    ]
    handles += [
        Line2D(
            [],
            [],
            color="#555555",
            ls=ls,
            marker="o",
            mfc="#555555" if c == "phenoprints" else "white",
            label=c,
        )
        for c, (_, ls) in c_style.items()
    ]
    grid = compute_grid(mae["flops"])
    law, k = section(fit, "loss_law"), compute_k(fit, runs)
    per_size = size_k(runs)
    if has_loss_law(fit):
        drew_band = False
        params = mae.groupby("model")["params"].max()
        for model in sizes:
            if model not in params.index:
                continue
            n, colour = float(params[model]), s_style[model][0]
            band = bands("loss", n, grid)
            if band is not None:
                ax.fill_between(grid, *band, color=colour, alpha=0.12, lw=0, zorder=1)
                drew_band = True
            kn = per_size.get(n, k)  # this size's FLOPs per parameter and crop
            ax.plot(grid, loss_at(law, n, grid / (kn * n)), color=colour, lw=1.0, ls=":", zorder=2)
        handles.append(Line2D([], [], color="#555555", ls=":", label="loss law L(N, D) per size"))
        if drew_band:
            handles.append(Patch(color="#555555", alpha=0.2, label=f"loss law, {BAND_LABEL}"))
    frontier = frontier_points(fit, "loss", mae, "loss", lower_is_better=True)
    if len(frontier):
        fx = np.append(frontier[:, 0], grid[-1])
        fy = np.append(frontier[:, 1], frontier[-1, 1])
        ax.step(fx, fy, where="post", color="black", lw=1.8, alpha=0.75, zorder=4)
        handles.append(
            Line2D([], [], color="black", lw=1.8, alpha=0.75, label="frontier (best so far)")
        )
    log_x(ax, grid[0], grid[-1])
    lo, hi = np.nanpercentile(mae["loss"], [0, 100])
    pad = 0.15 * (hi - lo if hi > lo else abs(hi) or 1.0)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("final validation loss (reconstruction)")
    ax.set_title("Loss vs training compute")
    legend_right(ax, handles)
    return save(fig, out_dir, "loss_vs_compute")


def isoflop_points(runs: pd.DataFrame, budgets: list[dict]) -> list[pd.DataFrame]:
    """The trained runs (finite positive FLOPs, params and loss) of each of fit.json's
    IsoFLOP ``budgets``: every run goes to the budget whose FLOPs are nearest its own
    (in log FLOPs); one DataFrame a budget, in the order of ``budgets``."""
    mae = mae_runs(runs)
    cols = [pd.to_numeric(mae[c], errors="coerce") for c in ("flops", "params", "loss")]
    mae = mae[np.logical_and.reduce([np.isfinite(c) & (c > 0) for c in cols])]
    centres = np.log([num(b.get("flops")) for b in budgets])
    nearest = np.abs(np.log(mae["flops"].to_numpy(float))[:, None] - centres[None, :])
    which = nearest.argmin(axis=1) if nearest.size else np.zeros(len(mae), int)
    return [mae[which == i] for i in range(len(budgets))]


def _isoflop_budget_label(b: dict) -> str:
    """Legend text of one budget: its FLOPs and N* with interval, or why not determined
    (the head of its reason, e.g. "minimum at the edge")."""
    head = f"C = {num(b.get('flops')):.2g} FLOPs"
    if not b.get("determined"):
        return f"{head}: {str(b.get('reason') or 'not determined').split(':')[0]}"
    pair = b.get("n_opt_ci")
    extra = f" ({num(pair[0]):.2g} to {num(pair[1]):.2g})" if pair else ""
    return f"{head}: N* = {num(b['n_opt']):.2g}{extra}"


def _isoflop_curve(ax, b: dict, pts: pd.DataFrame, colour) -> None:
    """One budget on the IsoFLOP axes: its runs, its parabola over the trained sizes and,
    when determined, the vertex N* with its 95% interval as a horizontal bar."""
    ax.scatter(pts["params"], pts["loss"], color=colour, s=30, edgecolor="white", lw=0.5, zorder=3)
    c0, c1, c2 = (num(c) for c in b["parabola"])
    u = np.linspace(*np.log10(pts["params"].agg(["min", "max"]).to_numpy(float)), 100)
    ax.plot(10**u, c0 + c1 * u + c2 * u**2, color=colour, lw=1.2, zorder=2)
    if b.get("determined") and finite(b.get("n_opt")):
        n = num(b["n_opt"])
        y = c0 + c1 * np.log10(n) + c2 * np.log10(n) ** 2
        pair = b.get("n_opt_ci") or [n, n]
        err = [[n - num(pair[0])], [num(pair[1]) - n]]
        ax.errorbar([n], [y], xerr=err, color=colour, marker="*", ms=11, capsize=3, zorder=4)


def plot_isoflop(runs, fit, out_dir: Path) -> list[Path]:
    """Figure 1b, ``isoflop``: final validation loss vs encoder parameters at each compute
    budget with >= 3 sizes (fit.json's ``isoflop``, Chinchilla's approach 2): the runs, the
    fitted parabola in log10 N over the trained sizes and, where determined, its minimum
    N*(C) (star) with its 95% trunk-clustered bootstrap interval (bar)."""
    budgets = [b for b in section(fit, "isoflop").get("budgets") or [] if isinstance(b, dict)]
    groups = isoflop_points(runs, budgets)
    drawn = [(b, g) for b, g in zip(budgets, groups, strict=True) if b.get("parabola") and len(g)]
    if not drawn:
        return []
    fig, ax = plt.subplots(figsize=(7.6, 4.6))
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(drawn)))
    handles = []
    for (b, pts), colour in zip(drawn, colours, strict=True):
        _isoflop_curve(ax, b, pts, colour)
        handles.append(Line2D([], [], color=colour, marker="o", label=_isoflop_budget_label(b)))
    iso = section(fit, "isoflop")
    if iso.get("determined") and finite(iso.get("n_exponent")):
        handles.append(Line2D([], [], ls="", label=f"N* ∝ C^{num(iso['n_exponent']):.2f}"))
    params = pd.concat([g["params"] for _, g in drawn])
    log_x(ax, params.min() / 1.5, params.max() * 1.5)
    ax.set_xlabel("encoder parameters N")
    ax.set_ylabel("final validation loss (reconstruction)")
    ax.set_title("IsoFLOP profiles: loss vs model size at fixed compute")
    legend_right(ax, handles, title="compute budget: minimum N* (95% CI)")
    return save(fig, out_dir, "isoflop")


def frontier_points(fit, name, points, column, lower_is_better=False) -> np.ndarray:
    """Frontier as an (n, 2) array of (FLOPs, best value reached at or below that
    compute), from fit.json's ``frontier[name]`` points when present, else from
    ``points[column]``; the running best is taken either way."""
    rows = section(fit, "frontier").get(name)
    pts = [
        (num(r[0]), num(r[1])) for r in rows or [] if isinstance(r, list | tuple) and len(r) >= 2
    ]
    pts = [p for p in pts if finite(*p) and p[0] > 0]
    if not pts and column in points.columns:
        df = points[["flops", column]].dropna()
        pts = list(zip(df["flops"].to_numpy(float), df[column].to_numpy(float), strict=True))
    if not pts:
        return np.empty((0, 2))
    arr = np.array(sorted(pts, key=lambda p: (p[0], p[1] if lower_is_better else -p[1])), float)
    arr[:, 1] = (np.minimum if lower_is_better else np.maximum).accumulate(arr[:, 1])
    return arr


def _metric_laws(fit: dict, metric: str, curations) -> list[tuple[str | None, dict]]:
    """[(curation, linear law)] to draw for ``metric``: one per curation fitted in
    ``by_curation``, else the pooled law (curation None)."""
    laws = section(fit, "metric_laws", metric)
    by_cur = section(laws, "by_curation")
    out = [
        (c, by_cur[c]["linear"])
        for c in curations
        if isinstance(by_cur.get(c), dict) and has_linear(by_cur[c].get("linear"))
    ]
    if not out and has_linear(laws.get("linear")):
        out = [(None, laws["linear"])]
    return out


def _metric_panel(ax, metric, points, fit, bands, baselines, s_style, c_style) -> list:
    """Draw one metric-vs-compute panel; return its legend handles (laws, bands,
    baselines)."""
    handles = []
    for (model, cur), grp in points.groupby(["model", "curation"]):
        ax.scatter(
            grp["flops"],
            grp[metric],
            color=c_style[str(cur)][0],
            marker=s_style.get(str(model), ("k", "o"))[1],
            s=30,
            edgecolor="white",
            linewidth=0.5,
            zorder=3,
        )
    grid = compute_grid(points["flops"])
    drew_band = False
    for cur, law in _metric_laws(fit, metric, c_style):
        colour, ls = c_style[cur] if cur is not None else ("black", "-")
        band = bands("linear", (metric, cur), grid)
        if band is not None:
            ax.fill_between(grid, *band, color=colour, alpha=0.15, lw=0, zorder=1)
            drew_band = True
        ax.plot(grid, linear_at(law, grid), color=colour, ls=ls, lw=1.4, zorder=2)
        who = cur if cur is not None else "all runs"
        handles.append(Line2D([], [], color=colour, ls=ls, label=f"linear law, {who}"))
    if drew_band:
        handles.append(Patch(color="#777777", alpha=0.3, label=BAND_LABEL))
    for kind in sorted(baselines, key=lambda k: (k not in BASELINE_KINDS, k)):
        value = baselines[kind].get(metric)
        if value is None or not np.isfinite(value):
            continue
        colour, dash = BASELINE_STYLE.get(kind, ("#999999", (0, (2, 2))))
        ax.axhline(value, color=colour, ls=dash, lw=1.1, zorder=1)
        name = "random-init (best size)" if kind == "random-init" else kind
        handles.append(Line2D([], [], color=colour, ls=dash, label=f"{name}: {value:.3g}"))
    log_x(ax, grid[0], grid[-1])
    return handles


def _point_handles(points, s_style, c_style) -> list:
    """Legend handles for the run points: curation colours, then size markers."""
    handles = [
        Line2D([], [], color=c_style[c][0], marker="o", ls="", label=f"{c} (data)") for c in c_style
    ]
    sizes = [s for s in s_style if s in set(points["model"].astype(str))]
    return handles + [
        Line2D([], [], color="#555555", marker=s_style[s][1], ls="", label=s) for s in sizes
    ]


def plot_metric_vs_compute(runs, metrics, fit, out_dir, bands, metric) -> list[Path]:
    """Figure 2, ``metric_vs_compute_<metric>``: a metric at b* vs training FLOPs, colour
    by curation and marker by size, the per-curation linear laws with bands, and the
    baselines as horizontal lines."""
    points = run_points(runs, metrics)
    if points.empty or metric not in points.columns or points[metric].isna().all():
        return []
    points = points[points[metric].notna()]
    s_style = size_styles(size_order(runs, fit))
    c_style = curation_styles(points["curation"].unique())
    fig, ax = plt.subplots(figsize=(7.6, 4.6))
    handles = _point_handles(points, s_style, c_style)
    handles += _metric_panel(
        ax, metric, points, fit, bands, baseline_values(runs, metrics, fit), s_style, c_style
    )
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel(f"{label(metric)} at best block b*")
    ax.set_title(f"{label(metric)} vs training compute")
    legend_right(ax, handles)
    return save(fig, out_dir, f"metric_vs_compute_{metric}")


def plot_metrics_grid(runs, metrics, fit, out_dir, bands) -> list[Path]:
    """Figure 2b, ``metrics_vs_compute``: one small panel per benchmark metric, as in
    :func:`plot_metric_vs_compute`, with one shared legend below."""
    points = run_points(runs, metrics)
    names = [
        m for m in metric_list(fit, metrics) if m in points.columns and points[m].notna().any()
    ]
    if points.empty or not names:
        return []
    s_style = size_styles(size_order(runs, fit))
    c_style = curation_styles(points["curation"].unique())
    base = baseline_values(runs, metrics, fit)
    ncol = min(3, len(names))
    nrow = -(-len(names) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.9 * nrow), squeeze=False)
    legend: dict[str, object] = {}
    for ax, metric in zip(axes.flat, names, strict=False):
        sub = points[points[metric].notna()]
        for h in _metric_panel(ax, metric, sub, fit, bands, base, s_style, c_style):
            key = h.get_label().split(":")[0]
            legend.setdefault(key, h)
        ax.set_title(label(metric))
        ax.set_xlabel("training FLOPs")
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    for h in legend.values():  # baselines differ per metric: name them without a value
        h.set_label(h.get_label().split(":")[0])
    handles = _point_handles(points, s_style, c_style) + list(legend.values())
    fig.suptitle("Benchmark metrics (at best block b*) vs training compute", y=1.0)
    fig.tight_layout()
    fig.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=min(5, len(handles)),
        frameon=False,
    )
    return save(fig, out_dir, "metrics_vs_compute")


def plot_best_block(runs, metrics, fit, out_dir) -> list[Path]:
    """Figure 3, ``best_block_vs_size``: each run's best block b* (left) and b* as a share
    of the depth (right) vs encoder parameters; grey bars mark each size's last block,
    the black line the mean share per size."""
    points = run_points(runs, metrics)
    if points.empty or points["best_block"].isna().all() or "params" not in points:
        return []
    points = points[points["best_block"].notna()].copy()
    if "depth" not in points.columns or points["depth"].isna().any():
        last = metrics.groupby("run_id")["block"].max()
        depth = points["depth"] if "depth" in points.columns else pd.Series(np.nan, points.index)
        points["depth"] = depth.fillna(last.reindex(points.index))
    points["share"] = points["best_block"] / points["depth"]
    c_style = curation_styles(points["curation"].unique())
    s_style = size_styles(size_order(runs, fit))
    # spread the runs of one size a little along x (ordered by curation, then compute)
    points = points.sort_values(["params", "curation", "flops"])
    rank = points.groupby("model").cumcount()
    count = points.groupby("model")["run_id"].transform("count")
    gaps = np.diff(np.log10(np.sort(points["params"].unique())))
    width = min(0.3, 0.6 * gaps.min()) if len(gaps) else 0.3  # decades, kept apart per size
    points["x"] = points["params"] * 10 ** (width * ((rank + 0.5) / count - 0.5))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.6, 3.9))
    sizes = points.groupby("model").agg(params=("params", "max"), depth=("depth", "max"))
    ax1.scatter(
        sizes["params"], sizes["depth"], marker="_", s=700, color="#999999", lw=2.5, zorder=1
    )
    for cur, grp in points.groupby("curation"):
        for ax, col in ((ax1, "best_block"), (ax2, "share")):
            for model, g in grp.groupby("model"):
                ax.scatter(
                    g["x"],
                    g[col],
                    color=c_style[str(cur)][0],
                    marker=s_style.get(str(model), ("k", "o"))[1],
                    s=34,
                    edgecolor="white",
                    lw=0.5,
                    zorder=3,
                )
    mean_share = points.groupby("params")["share"].mean()
    ax2.plot(mean_share.index, mean_share.values, color="black", lw=1.2, marker="", zorder=2)
    ax2.axhline(1.0, color="#999999", lw=1.0, ls="--", zorder=1)
    for ax in (ax1, ax2):
        log_x(ax, sizes["params"].min() / 1.8, sizes["params"].max() * 1.8)
        ax.set_xlabel("encoder parameters N")
    ax1.set_ylim(0, sizes["depth"].max() + 1)
    ax1.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_ylabel("best block b* (1 = first)")
    ax1.set_title("Best block vs model size")
    ax2.set_ylim(0, 1.08)
    ax2.set_ylabel("b* / depth")
    ax2.set_title("Best block as a share of depth")
    handles = [Line2D([], [], color=c_style[c][0], marker="o", ls="", label=c) for c in c_style] + [
        Line2D([], [], color="#555555", marker=s_style[s][1], ls="", label=s)
        for s in s_style
        if s in sizes.index
    ]
    handles += [
        Line2D([], [], color="#999999", lw=2.5, label="last block (depth)"),
        Line2D([], [], color="black", lw=1.2, label="mean share per size"),
    ]
    legend_right(ax2, handles)
    fig.tight_layout()
    return save(fig, out_dir, "best_block_vs_size")


def plot_block_heatmap(runs, metrics, fit, out_dir, metric) -> list[Path]:
    """Figure 4, ``block_heatmap_<metric>``: the metric at every block (columns) of every
    trained run (rows, by parameters, curation, then compute); a box marks b*, grey cells
    are blocks the model does not have."""
    metrics = as_metrics(metrics)
    mae = mae_runs(runs)
    sub = metrics[(metrics["metric"] == metric) & metrics["run_id"].isin(mae["run_id"])]
    sub = sub[(sub["block"] >= 1) & np.isfinite(pd.to_numeric(sub["value"], errors="coerce"))]
    if sub.empty:
        return []
    order = mae[mae["run_id"].isin(sub["run_id"])].sort_values(["params", "curation", "flops"])
    table = sub.pivot_table(index="run_id", columns="block", values="value", aggfunc="mean")
    blocks = np.arange(1, int(table.columns.max()) + 1)
    table = table.reindex(index=order["run_id"], columns=blocks)
    best = best_blocks(metrics).reindex(table.index)
    nrow, ncol = table.shape
    fig, ax = plt.subplots(figsize=(max(5.0, 1.8 + 0.55 * ncol + 2.2), 1.4 + 0.32 * nrow))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#e6e6e6")
    im = ax.imshow(np.ma.masked_invalid(table.to_numpy(float)), aspect="auto", cmap=cmap)
    values = table.to_numpy(float)
    vmin, vmax = np.nanmin(values), np.nanmax(values)
    if ncol <= 16 and nrow <= 40:
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                bright = (v - vmin) / (vmax - vmin) > 0.6 if vmax > vmin else False
                ax.text(
                    j,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="black" if bright else "white",
                )
    for i, b in enumerate(best.to_numpy()):
        if np.isfinite(b) and b >= 1:
            ax.add_patch(Rectangle((b - 1 - 0.5, i - 0.5), 1, 1, fill=False, ec="#D55E00", lw=2.0))
    labels = [f"{r.model} · {r.curation} · {r.flops:.2g}" for r in order.itertuples()]
    ax.set_yticks(range(nrow), labels)
    ax.set_xticks(range(ncol), [str(b) for b in blocks])
    ax.grid(False)
    ax.set_xlabel("block (1 = first transformer block)")
    ax.set_ylabel("run (size · curation · training FLOPs)")
    ax.set_title(
        f"{label(metric)} at every block (orange box: best block b*, by the validation probes)"
    )
    fig.colorbar(im, ax=ax, label=label(metric), fraction=0.04, pad=0.02)
    fig.tight_layout()
    return save(fig, out_dir, f"block_heatmap_{metric}")


def holdout_panels(fit: dict) -> list[tuple[str, np.ndarray, np.ndarray, float, list]]:
    """[(title, actual, predicted, held-out error, run_ids)] for the loss law (unless it
    is not determined) and each metric law whose held-out predictions are in fit.json."""
    out = []
    named = [] if loss_law_not_determined(fit) else [("loss law", section(fit, "loss_law"))]
    named += [
        (label(m), law) for m, law in section(fit, "metric_laws").items() if isinstance(law, dict)
    ]
    for title, law in named:
        hold = section(law, "holdout")
        actual = np.array([num(v) for v in hold.get("actual") or []])
        pred = np.array([num(v) for v in hold.get("predicted") or []])
        ids = list(hold.get("run_ids") or [])
        ids = ids if len(ids) == len(actual) else [None] * len(actual)
        if len(actual) and len(actual) == len(pred):
            keep = np.isfinite(actual) & np.isfinite(pred)
            if keep.any():
                kept = [i for i, k in zip(ids, keep, strict=True) if k]
                out.append((title, actual[keep], pred[keep], num(law.get("holdout_error")), kept))
    return out


def plot_holdout(fit, out_dir, runs: pd.DataFrame | None = None) -> list[Path]:
    """Figure 5, ``holdout``: for each law, its prediction for the held-out largest-compute
    runs (fitted without them) against what they reached, coloured by curation where the
    run is in ``runs``; points on the dashed y = x line are perfect predictions."""
    panels = holdout_panels(fit)
    if not panels:
        return []
    cur_of = {}
    if runs is not None and {"run_id", "curation"} <= set(runs.columns):
        cur_of = dict(zip(runs["run_id"].astype(str), runs["curation"].astype(str), strict=True))
    c_style = curation_styles(cur_of.values()) if cur_of else {}
    ncol = len(panels) if len(panels) <= 4 else 3 if len(panels) <= 9 else 4
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.0 * ncol, 3.0 * nrow), squeeze=False)
    seen: dict[str, object] = {}
    for ax, (title, actual, pred, err, ids) in zip(axes.flat, panels, strict=False):
        lo, hi = min(actual.min(), pred.min()), max(actual.max(), pred.max())
        pad = 0.1 * (hi - lo) if hi > lo else 0.05 * (abs(hi) or 1.0)
        lim = (lo - pad, hi + pad)
        ax.plot(lim, lim, color="#777777", ls="--", lw=1.0, zorder=1)
        colours = [c_style.get(cur_of.get(str(i)), ("#000000",))[0] for i in ids]
        ax.scatter(actual, pred, color=colours, s=30, edgecolor="white", lw=0.5, zorder=3)
        for i in ids:
            cur = cur_of.get(str(i))
            if cur in c_style:
                seen.setdefault(
                    cur, Line2D([], [], color=c_style[cur][0], marker="o", ls="", label=cur)
                )
        ax.set_xlim(lim)
        ax.set_ylim(lim)
        ax.set_aspect("equal")
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.yaxis.set_major_locator(MaxNLocator(4))
        ax.set_title(f"{title}\nheld-out error {err:.3g}" if np.isfinite(err) else title)
        ax.set_xlabel("actual")
        ax.set_ylabel("predicted")
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle("Held-out check: laws fitted without the largest-compute runs")
    fig.tight_layout()
    if seen:
        fig.legend(
            handles=list(seen.values()),
            loc="upper center",
            bbox_to_anchor=(0.5, 0.0),
            ncol=len(seen),
            frameon=False,
        )
    return save(fig, out_dir, "holdout")


def plot_all(
    runs: pd.DataFrame,
    metrics: pd.DataFrame | None,
    fit: dict,
    out_dir,
    bands: Bands | None = None,
) -> list[Path]:
    """Draw every figure whose inputs exist into ``out_dir`` (created if needed) and
    return the files written (PNG and SVG of each); with ``metrics`` None or empty only
    the loss, IsoFLOP and held-out figures. ``bands(law, key, x)`` gives the
    shaded intervals (see :data:`Bands`); by default :func:`default_bands`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fit = fit if isinstance(fit, dict) else {}
    metrics = as_metrics(metrics)
    bands = bands or default_bands(runs, metrics, fit)
    paths: list[Path] = []
    with plt.rc_context(RC):
        if {"flops", "loss", "model", "curation"} <= set(runs.columns):
            paths += plot_loss_vs_compute(runs, fit, out_dir, bands)
        if {"flops", "loss", "params"} <= set(runs.columns):
            paths += plot_isoflop(runs, fit, out_dir)
        if not metrics.empty and {"flops", "model", "curation"} <= set(runs.columns):
            if "recall_complex" in set(metrics["metric"]):
                paths += plot_metric_vs_compute(
                    runs, metrics, fit, out_dir, bands, "recall_complex"
                )
            paths += plot_metrics_grid(runs, metrics, fit, out_dir, bands)
            paths += plot_best_block(runs, metrics, fit, out_dir)
            for metric in HEATMAP_METRICS:
                paths += plot_block_heatmap(runs, metrics, fit, out_dir, metric)
        paths += plot_holdout(fit, out_dir, runs)
    return paths
