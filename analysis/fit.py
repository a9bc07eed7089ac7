"""Runs and metrics tables to ``fit.json`` (ARCHITECTURE section 4 "Scaling laws",
section 6 "Contract"): the loss law, compute-optimal allocation, metric laws with
held-out errors, the frontier, best blocks, curation multipliers and baselines.

The math lives in :mod:`analysis.laws`; this module selects rows, picks each run's best
block, assembles the JSON-ready dict and writes it atomically. No plots are drawn here.

Inputs (section 6): ``runs.parquet`` has one row a run (run_id, model, params, curation,
crops_seen, flops, loss, optionally kind, depth and wsd_trunk); only rows with kind ==
"mae" (all rows when there is no kind column) enter the fits, rows with kind ==
"baseline" are reported under "baselines". ``metrics.parquet`` has run_id, block,
metric, value.

Every bootstrap resamples WSD trunks, not runs (section 4, "Trunk-clustered
bootstrap"): a run's trunk is its ``wsd_trunk`` (the run id of the shared
warm-up/stable/decay run it branches off or ends), or the run itself where that is
missing or the column is absent (``trunk_groups``).

"Not determined" (section 4): a law whose fitted parameter, or its 95% interval, touches
its search bound carries ``determined: false`` and ``not_determined``, a list of one-line
reasons (empty when determined); nothing downstream is computed from such a loss law
(compute_optimal's exponents are null with a ``reason``, ``recommend`` gives no size).

fit.json keys (``FIT_JSON_KEYS``): inputs, loss_law (E, A, B, alpha, beta, ci,
determined, not_determined, samples, held-out check), compute_optimal (n_exponent,
d_exponent, ci, k, reason), isoflop, metric_laws, frontier, best_block, curation,
baselines, skipped. ``isoflop`` is Chinchilla's approach 2 (``laws.isoflop``)::

    {"budgets": [{"flops", "n_runs", "sizes", "n_opt", "n_opt_ci", "n_kept", "parabola",
                  "determined", "reason"}, ...],
     "n_exponent", "n_exponent_ci", "n_kept", "determined", "reason"}

one entry per compute budget (runs within 5% of each other's FLOPs): its median FLOPs,
runs, distinct sizes (parameters), the vertex N* of the parabola of loss in log10 N
(null unless determined) with its 95% interval, the resamples whose vertex was interior,
the parabola [c0, c1, c2] (L = c0 + c1 log10 N + c2 log10(N)^2) and why it is not
determined; then N* ∝ C^n_exponent fitted across the determined budgets.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import laws
from scaling.errors import InputError

RUNS_COLUMNS = ("run_id", "model", "params", "curation", "crops_seen", "flops", "loss")
METRICS_COLUMNS = ("run_id", "block", "metric", "value")
VAL_SUFFIX = "_val"  # validation probe metrics: they choose the best block, not fitted
BEST_BLOCK_METRIC = "recall_complex"
REFERENCE_CURATION, OTHER_CURATION = "phenoprints", "random"
LOSS_HOLDOUT_KIND = "mean |L_pred - L| / L over held-out runs (relative error of the loss)"
METRIC_HOLDOUT_KIND = "mean |m_pred - m| over held-out runs (linear law, metric units)"
FIT_JSON_KEYS = (
    "inputs",
    "loss_law",
    "compute_optimal",
    "isoflop",
    "metric_laws",
    "frontier",
    "best_block",
    "curation",
    "baselines",
    "skipped",
)


# ------------------------------------------------------------------------ public API


def fit(
    runs_path, metrics_path, out_dir, bootstrap: int = 200, seed: int = 0, figures: bool = False
) -> dict:
    """Read the runs (and optional metrics) Parquet tables, fit every law and write
    ``out_dir/fit.json`` atomically (temp file in the same folder, then os.replace), and
    with ``figures`` the plots of ``analysis.plots`` under ``out_dir/figures``. Returns the
    fit.json dict. InputError names the file that is missing, unreadable or short of a
    column."""
    runs = read_table(runs_path, RUNS_COLUMNS)
    metrics = None if metrics_path is None else read_table(metrics_path, METRICS_COLUMNS)
    result = fit_tables(runs, metrics, bootstrap=bootstrap, seed=seed)
    write_json(result, Path(out_dir) / "fit.json")
    if figures:
        from analysis.plots import plot_all

        plot_all(runs, metrics, result, Path(out_dir) / "figures")
    return result


def fit_tables(
    runs: pd.DataFrame, metrics: pd.DataFrame | None, bootstrap: int = 200, seed: int = 0
) -> dict:
    """The fit.json dict from the runs table and the (optional) metrics table.

    Raises InputError when the loss law is under-determined or an input column is bad;
    metric laws that cannot be fitted are recorded under "skipped" instead.
    """
    if bootstrap < 0:
        raise InputError(f"bootstrap: must be >= 0, got {bootstrap}")
    all_runs = _check_runs(runs)
    mae = _mae_runs(all_runs)
    metrics = None if metrics is None else _check_metrics(metrics)
    out: dict = {"inputs": _inputs_section(mae, bootstrap, seed), "skipped": {}}
    out["loss_law"], samples = _loss_section(mae, bootstrap, seed)
    out["compute_optimal"] = _compute_optimal_section(mae, out["loss_law"], samples)
    out["isoflop"] = laws.isoflop(
        mae["params"],
        mae["flops"],
        mae["loss"],
        bootstrap,
        _section_seed(seed, "isoflop"),
        trunk_groups(mae),
    )

    if out["loss_law"]["holdout"] is None:
        out["skipped"]["loss_law.holdout"] = "too few runs to hold any out and still fit"
    frontier = {"loss": laws.frontier(mae.flops, mae.loss, mae.run_id, higher_is_better=False)}
    out.update(metric_laws={}, frontier=frontier, best_block=[], curation={}, baselines={})
    if metrics is None:
        out["skipped"]["metrics"] = "no metrics table given"
    else:
        blocks = best_blocks(metrics)
        values = values_at_blocks(metrics, blocks)
        for m in [c for c in values.columns if not str(c).endswith(VAL_SUFFIX)]:
            value = values[m].reindex(mae["run_id"]).to_numpy(float)
            _fit_metric(out, mae, value, m, bootstrap, seed)
        out["best_block"] = _best_block_rows(mae, metrics, blocks, values)
        out["baselines"] = _baselines_section(all_runs, blocks, values)
    return to_jsonable({k: out[k] for k in FIT_JSON_KEYS})


def recommend(fit_json: dict, budget_flops: float, metric: str = BEST_BLOCK_METRIC) -> dict:
    """What to train for ``budget_flops`` FLOPs, from a fit.json dict: the compute-optimal
    parameters N_opt and crops D_opt (section 4), the predicted loss there, the predicted
    ``metric`` from its linear law with a 95% bootstrap interval, and the trained size
    nearest to N_opt (in log parameters). When the loss law is not determined, params,
    crops, the predicted loss and the nearest size are None and ``note`` says why."""
    budget = float(budget_flops)
    if not (math.isfinite(budget) and budget > 0):
        raise InputError(f"budget_flops: must be a positive number of FLOPs, got {budget_flops!r}")
    lo, hi = fit_json.get("inputs", {}).get("flops_range", [None, None])
    out = {
        "budget_flops": budget,
        "params": None,
        "crops": None,
        "predicted_loss": None,
        "predicted_loss_ci": None,
        "metric": metric,
        "predicted_metric": None,
        "predicted_metric_ci": None,
        "nearest_size": None,
        "within_trained_range": lo is not None and hi is not None and lo <= budget <= hi,
        "note": None,
    }
    notes = [_recommend_size(fit_json, budget, out)]
    entry = fit_json.get("metric_laws", {}).get(metric)
    if entry is None:
        why = fit_json.get("skipped", {}).get(f"metric_laws.{metric}", "not in metric_laws")
        notes.append(f"{metric}: no metric law ({why})")
        out["note"] = "; ".join(n for n in notes if n) or None
        return out
    lin = entry["linear"]
    samples = _samples_array(lin, ("intercept", "slope"))
    point, ci = laws.predict_linear(budget, laws.LinearLaw(lin["intercept"], lin["slope"]), samples)
    out["predicted_metric"], out["predicted_metric_ci"] = point, ci
    out["note"] = "; ".join(n for n in notes if n) or None
    return out


def _recommend_size(fit_json: dict, budget: float, out: dict) -> str | None:
    """Fill ``out``'s params, crops, predicted_loss(_ci) and nearest_size from the loss law
    at ``budget`` FLOPs; return why not (a note) when the law is not determined."""
    try:
        ll, k = fit_json["loss_law"], fit_json["compute_optimal"]["k"]
        if ll.get("determined") is False:
            return "loss law not determined: " + "; ".join(ll.get("not_determined") or [])
        law = laws.LossLaw(*(float(ll[p]) for p in ("E", "A", "B", "alpha", "beta")))
    except (KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"fit.json: no usable loss_law/compute_optimal ({exc})") from exc
    n_opt, d_opt = (float(v) for v in laws.n_opt_d_opt(budget, law, float(k)))
    out.update(
        params=n_opt,
        crops=d_opt,
        predicted_loss=float(law(n_opt, d_opt)),
        predicted_loss_ci=_loss_ci_at(ll, n_opt, d_opt),
        nearest_size=_nearest_size(fit_json.get("inputs", {}).get("params", {}), n_opt),
    )
    return None


# -------------------------------------------------------------------------- reading


def read_table(path, columns: tuple[str, ...]) -> pd.DataFrame:
    """A Parquet file as a DataFrame; InputError naming the file if it is missing,
    unreadable or lacks one of ``columns``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: not found (run `scaling ladder` to make it)")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for a bad file
        raise InputError(f"{path}: not a readable Parquet file ({type(exc).__name__})") from exc
    _require_columns(df, columns, str(path))
    return df


def _require_columns(df: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{what}: missing column(s) {', '.join(missing)}")


def _check_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs table with a kind column (default "mae") and unique run ids."""
    _require_columns(runs, RUNS_COLUMNS, "runs")
    runs = runs.copy()
    if "kind" not in runs.columns:
        runs["kind"] = "mae"
    runs["run_id"] = runs["run_id"].astype(str)
    dup = runs["run_id"][runs["run_id"].duplicated()]
    if len(dup):
        raise InputError(f"runs.run_id: duplicate run id {dup.iloc[0]!r}")
    return runs


def trunk_groups(runs: pd.DataFrame) -> np.ndarray:
    """Bootstrap cluster of each row of ``runs`` (n,) as str (section 4): its wsd_trunk,
    or its own run_id where wsd_trunk is missing (None, NaN, empty) or the column absent."""
    ids = runs["run_id"].astype(str)
    if "wsd_trunk" not in runs.columns:
        return ids.to_numpy()
    trunk = runs["wsd_trunk"]
    text = trunk.astype(str).str.strip()
    return text.where(trunk.notna() & (text != ""), ids).to_numpy()


def _mae_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Rows with kind == "mae", sorted by flops then run_id; params, crops_seen, flops
    and loss must be finite and > 0 (InputError naming the column)."""
    mae = runs[runs["kind"].astype(str) == "mae"].copy()
    if mae.empty:
        raise InputError("runs: no rows with kind == 'mae' to fit")
    for col in ("params", "crops_seen", "flops", "loss"):
        mae[col] = laws.check_positive(f"runs.{col}", pd.to_numeric(mae[col], errors="coerce"))
    return mae.sort_values(["flops", "run_id"], kind="stable").reset_index(drop=True)


def _check_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    _require_columns(metrics, METRICS_COLUMNS, "metrics")
    m = metrics[list(METRICS_COLUMNS)].copy()
    m["run_id"] = m["run_id"].astype(str)
    m["metric"] = m["metric"].astype(str)
    m["value"] = pd.to_numeric(m["value"], errors="coerce")
    block = pd.to_numeric(m["block"], errors="coerce")
    if block.isna().any():
        raise InputError("metrics.block: non-numeric block numbers")
    m["block"] = block.astype(int)
    return m


# ---------------------------------------------------------------------- best blocks


def best_blocks(metrics: pd.DataFrame) -> pd.Series:
    """Each run's best block b* (section 4): the argmax over blocks of the mean of its
    ``*_val`` metrics, ties to the lower block; the last block when a run has no finite
    ``*_val`` value. Returns an int Series indexed by run_id."""
    last = metrics.groupby("run_id")["block"].max()
    val = metrics[metrics["metric"].str.endswith(VAL_SUFFIX) & metrics["value"].notna()]
    score = val.groupby(["run_id", "block"], as_index=False)["value"].mean()
    score = score.sort_values(["run_id", "value", "block"], ascending=[True, False, True])
    best = score.drop_duplicates("run_id").set_index("run_id")["block"]
    return best.reindex(last.index).fillna(last).astype(int).rename("block")


def values_at_blocks(metrics: pd.DataFrame, blocks: pd.Series) -> pd.DataFrame:
    """Wide table run_id x metric of each metric's value at the run's block in
    ``blocks`` (mean over duplicate rows)."""
    at = metrics.join(blocks.rename("best"), on="run_id")
    at = at[at["block"] == at["best"]]
    wide = at.pivot_table(index="run_id", columns="metric", values="value", aggfunc="mean")
    wide.columns.name = None
    return wide.reindex(columns=sorted(wide.columns))


def _best_block_rows(mae, metrics, blocks, values) -> list[dict]:
    """One "best_block" entry per MAE run: b* and BEST_BLOCK_METRIC at b* and at the
    last block."""
    names = [c for c in values.columns if not str(c).endswith(VAL_SUFFIX)]
    metric = BEST_BLOCK_METRIC if BEST_BLOCK_METRIC in names or not names else names[0]
    last = values_at_blocks(metrics, metrics.groupby("run_id")["block"].max())
    rows = []
    for r in mae.itertuples(index=False):
        depth = getattr(r, "depth", None)
        rows.append(
            {
                "run_id": r.run_id,
                "model": str(r.model),
                "params": int(r.params),
                "curation": str(r.curation),
                "flops": float(r.flops),
                "depth": None if depth is None or pd.isna(depth) else int(depth),
                "block": _lookup(blocks, r.run_id),
                "metric": metric,
                "value_best": _lookup(values.get(metric), r.run_id),
                "value_last": _lookup(last.get(metric), r.run_id),
            }
        )
    return rows


def _lookup(series: pd.Series | None, key):
    if series is None or key not in series.index or pd.isna(series[key]):
        return None
    v = series[key]
    return int(v) if isinstance(v, (int, np.integer)) else float(v)


# ------------------------------------------------------------------------- sections


def _section_seed(seed: int, name: str) -> list[int]:
    """Seed of one section's bootstrap: the same for a name whatever else is fitted."""
    return [int(seed), zlib.crc32(name.encode())]


def _inputs_section(mae: pd.DataFrame, bootstrap: int, seed: int) -> dict:
    params = mae.groupby("model")["params"].median().sort_values(kind="stable")
    return {
        "runs": len(mae),
        "sizes": [str(m) for m in params.index],
        "params": {str(m): int(round(n)) for m, n in params.items()},
        "curations": sorted(mae["curation"].astype(str).unique()),
        "flops_range": [float(mae["flops"].min()), float(mae["flops"].max())],
        "bootstrap": int(bootstrap),
        "seed": int(seed),
    }


def _loss_section(mae: pd.DataFrame, bootstrap: int, seed: int) -> tuple[dict, np.ndarray]:
    """The "loss_law" entry and its trunk-clustered bootstrap samples (n, 5) of
    (E, A, B, alpha, beta)."""
    N, D, L = mae["params"].to_numpy(), mae["crops_seen"].to_numpy(), mae["loss"].to_numpy()
    law = laws.fit_loss_law(N, D, L)
    samples = laws.bootstrap_loss_law(
        N, D, L, law, bootstrap, _section_seed(seed, "loss_law"), trunk_groups(mae)
    )
    names = ("E", "A", "B", "alpha", "beta")
    reasons = laws.loss_law_not_determined(law, samples, N, D)
    out = {
        **law.as_dict(),
        "ci": laws.loss_law_ci(samples),
        "determined": not reasons,
        "not_determined": reasons,
        "n_runs": len(mae),
        "n_bootstrap": len(samples),
        **_samples_entry(samples, names),
    }
    held = laws.holdout_mask(mae["flops"], lambda tr: laws.loss_law_fittable(N[tr], D[tr]))
    if held is None:
        out.update(holdout_error=None, holdout=None)
        return out, samples
    train = laws.fit_loss_law(N[~held], D[~held], L[~held])
    pred = train(N[held], D[held])
    out["holdout_error"] = float(np.mean(np.abs(pred - L[held]) / L[held]))
    out["holdout_error_kind"] = LOSS_HOLDOUT_KIND
    out["holdout"] = {
        "run_ids": mae["run_id"][held].tolist(),
        "predicted": pred.tolist(),
        "actual": L[held].tolist(),
        "n_train": int((~held).sum()),
    }
    return out, samples


def _compute_optimal_section(mae: pd.DataFrame, loss: dict, samples: np.ndarray) -> dict:
    """N_opt ∝ C^n_exponent, D_opt ∝ C^d_exponent under C = k N D (section 4); the
    exponents and their intervals are null, with a ``reason``, when the loss law is not
    determined."""
    out = {
        "n_exponent": None,
        "d_exponent": None,
        "ci": {"n_exponent": None, "d_exponent": None},
        "k": laws.fit_k(mae["params"], mae["crops_seen"], mae["flops"]),
        "reason": None,
    }
    if not loss["determined"]:
        out["reason"] = "loss law not determined: " + "; ".join(loss["not_determined"])
        return out
    boot = np.array([laws.compute_optimal_exponents(a, b) for a, b in samples[:, 3:5]])
    boot = boot.reshape(-1, 2)
    out["n_exponent"], out["d_exponent"] = laws.compute_optimal_exponents(
        loss["alpha"], loss["beta"]
    )
    out["ci"] = {name: laws.percentile_ci(boot[:, i]) for i, name in enumerate(out["ci"])}
    return out


def _samples_entry(samples: np.ndarray, names: tuple[str, ...]) -> dict:
    """Bootstrap parameter sets as stored beside a law: "samples" is a list of
    [p1, p2, ...] rows in the order of "sample_params" (``names``)."""
    return {"sample_params": list(names), "samples": samples.tolist()}


def _linear_entry(C, m, groups, bootstrap: int, seed) -> dict:
    """A linear metric law with its trunk-clustered bootstrap (groups: (n,) trunks) and
    samples; it has no bounded parameter, so it is always determined."""
    law = laws.fit_linear(C, m)
    s = laws.linear_samples(C, m, bootstrap, seed, groups)
    return {
        "intercept": law.intercept,
        "slope": law.slope,
        "ci": {"intercept": laws.percentile_ci(s[:, 0]), "slope": laws.percentile_ci(s[:, 1])},
        "n_bootstrap": len(s),
        "determined": True,
        "not_determined": [],
        **_samples_entry(s, ("intercept", "slope")),
    }


def _saturating_entry(C, m, groups, bootstrap: int, seed) -> dict:
    """The saturating metric law with its trunk-clustered bootstrap, or {"skipped": why}."""
    try:
        law = laws.fit_saturating(C, m)
    except InputError as exc:
        return {"skipped": str(exc)}
    s = laws.saturating_samples(C, m, bootstrap, seed, groups)
    names = ("m_inf", "k", "gamma")
    reasons = laws.saturating_not_determined(law, s)
    return {
        "m_inf": law.m_inf,
        "k": law.k,
        "gamma": law.gamma,
        "x_center": law.x_center,
        "gap_at_center": law.gap,
        "gamma_at_bound": bool(
            np.isclose(law.gamma, [laws.GAMMA_LO, laws.GAMMA_HI], rtol=1e-3).any()
        ),
        "ci": {k: laws.percentile_ci(s[:, i]) for i, k in enumerate(names)},
        "n_bootstrap": len(s),
        "determined": not reasons,
        "not_determined": reasons,
        **_samples_entry(s, names),
    }


def _can(check, *args) -> bool:
    try:
        check(*args)
    except InputError:
        return False
    return True


def _metric_holdout(run_ids, C, m) -> dict | None:
    """Linear (and, when it fits, saturating) law fitted without the largest-compute
    runs, evaluated on them; None when no hold-out leaves a fittable set."""
    held = laws.holdout_mask(C, lambda tr: _can(laws.check_linear_inputs, C[tr], m[tr]))
    if held is None:
        return None
    pred = laws.fit_linear(C[~held], m[~held])(C[held])
    try:
        sat = laws.fit_saturating(C[~held], m[~held])(C[held])
        sat_error = float(np.mean(np.abs(sat - m[held])))
    except InputError:
        sat_error = None
    return {
        "run_ids": run_ids[held].tolist(),
        "predicted": pred.tolist(),
        "actual": m[held].tolist(),
        "error": float(np.mean(np.abs(pred - m[held]))),
        "saturating_error": sat_error,
        "n_train": int((~held).sum()),
    }


def _fit_metric(out: dict, mae: pd.DataFrame, value, metric: str, bootstrap: int, seed: int):
    """Fill metric_laws[metric], frontier[metric] and curation[metric] in ``out`` (or
    skipped["metric_laws.<metric>"] when the linear law is under-determined).
    ``value``: the metric at each MAE run's best block, shape (n_runs,), NaN if absent."""
    rows = mae[np.isfinite(value)]
    C, m = rows["flops"].to_numpy(float), value[np.isfinite(value)]
    ids, groups = rows["run_id"].to_numpy(str), trunk_groups(rows)
    if len(rows):
        out["frontier"][metric] = laws.frontier(C, m, ids)
    try:
        linear = _linear_entry(C, m, groups, bootstrap, _section_seed(seed, f"{metric}.linear"))
    except InputError as exc:
        out["skipped"][f"metric_laws.{metric}"] = str(exc)
        return
    holdout = _metric_holdout(ids, C, m)
    entry = {
        "n_runs": len(rows),
        "linear": linear,
        "saturating": _saturating_entry(
            C, m, groups, bootstrap, _section_seed(seed, f"{metric}.sat")
        ),
        "holdout_error": None if holdout is None else holdout.pop("error"),
        "holdout_error_kind": METRIC_HOLDOUT_KIND,
        "holdout": holdout,
        "by_curation": {},
    }
    if holdout is None:
        out["skipped"][f"metric_laws.{metric}.holdout"] = "too few runs to hold any out"
    curation = rows["curation"].astype(str).to_numpy()
    per_curation = {}
    for cur in sorted(set(curation)):
        Cc, mc, gc = (a[curation == cur] for a in (C, m, groups))
        try:
            lin = _linear_entry(Cc, mc, gc, bootstrap, _section_seed(seed, f"{metric}.{cur}"))
            entry["by_curation"][cur] = {"linear": lin, "n_runs": len(mc)}
            per_curation[cur] = (Cc, mc, gc)
        except InputError as exc:
            entry["by_curation"][cur] = {"skipped": str(exc), "n_runs": len(mc)}
    out["metric_laws"][metric] = entry
    out["curation"][metric] = _curation_entry(C, per_curation, bootstrap, seed, metric)


def _curation_entry(C_all, per_curation: dict, bootstrap: int, seed: int, metric: str) -> dict:
    """Effective-compute multiplier of OTHER_CURATION vs REFERENCE_CURATION at the
    geometric-mean compute of the runs, with a bootstrap resampling trunks within each
    curation (section 4, via laws.effective_compute_multiplier). per_curation:
    {curation: (C, m, trunk groups)}, each (n_curation_runs,)."""
    at = float(10 ** np.mean(np.log10(C_all)))
    out = {
        "reference": REFERENCE_CURATION,
        "other": OTHER_CURATION,
        "multiplier": None,
        "ci": None,
        "at_flops": at,
        "reason": None,
    }
    missing = [c for c in (REFERENCE_CURATION, OTHER_CURATION) if c not in per_curation]
    if missing:
        out["reason"] = f"no fittable linear law for curation(s) {', '.join(missing)}"
        return out
    (*ref, ref_g), (*oth, oth_g) = (per_curation[c] for c in (REFERENCE_CURATION, OTHER_CURATION))
    ref_law, oth_law = laws.fit_linear(*ref), laws.fit_linear(*oth)
    for name, law in ((REFERENCE_CURATION, ref_law), (OTHER_CURATION, oth_law)):
        if not law.slope > 0:
            out["reason"] = f"{name} slope is {law.slope:.3g} <= 0: no compute equivalent"
            return out
    out["multiplier"] = laws.effective_compute_multiplier(ref_law, oth_law, at)
    seed = _section_seed(seed, f"{metric}.cur")
    draws = laws.multiplier_samples(ref, oth, at, bootstrap, seed, (ref_g, oth_g))
    out["ci"] = laws.percentile_ci(draws)
    return out


def _baselines_section(runs: pd.DataFrame, blocks: pd.Series, values: pd.DataFrame) -> dict:
    """{baseline run_id: {model, block, metric: value at its best block, ...}}."""
    out = {}
    for r in runs[runs["kind"].astype(str) == "baseline"].itertuples(index=False):
        entry = {"model": str(r.model), "block": _lookup(blocks, r.run_id)}
        if r.run_id in values.index:
            row = values.loc[r.run_id]
            entry.update({str(k): float(v) for k, v in row.items() if pd.notna(v)})
        out[r.run_id] = entry
    return out


# ------------------------------------------------------------------------ recommend


def _samples_array(law: dict, names: tuple[str, ...]) -> np.ndarray:
    """A law's stored bootstrap rows (``law["samples"]``, see ``_samples_entry``) as an
    (n, len(names)) float array, None entries as NaN; empty when absent or malformed."""
    rows = [r for r in law.get("samples") or [] if isinstance(r, list) and len(r) == len(names)]
    return np.array([[np.nan if v is None else v for v in r] for r in rows], float).reshape(
        -1, len(names)
    )


def _loss_ci_at(loss_law: dict, N: float, D: float) -> list[float] | None:
    """95% interval of the loss at (N, D) over the loss law's stored bootstrap rows."""
    s = _samples_array(loss_law, ("E", "A", "B", "alpha", "beta"))
    if not len(s):
        return None
    return laws.percentile_ci(s[:, 0] + s[:, 1] / N ** s[:, 3] + s[:, 2] / D ** s[:, 4])


def _nearest_size(params: dict, n_opt: float) -> str | None:
    sizes = {k: float(v) for k, v in params.items() if v and float(v) > 0}
    if not sizes:
        return None
    return min(sizes, key=lambda k: abs(math.log(sizes[k]) - math.log(n_opt)))


# ---------------------------------------------------------------------------- JSON


def to_jsonable(obj):
    """Plain JSON types all the way down: numpy scalars and arrays to Python numbers
    and lists, tuples to lists, NaN and infinities to None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def write_json(obj: dict, path) -> None:
    """Write ``obj`` as JSON to ``path`` atomically: a temp file in the same folder,
    then os.replace, so readers never see half a file. NaN is refused."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(to_jsonable(obj), indent=1, allow_nan=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text + "\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
