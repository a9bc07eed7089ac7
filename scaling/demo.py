"""``scaling demo``: the main job on the synthetic world, end to end.

Synthesise the world, inspect it, run the demo ladder (curate the world both ways, pretrain
every size x curation x budget, evaluate every block, score the baselines), fit the scaling
laws, write the report, and print where it is: the loss law with its intervals (or why it
is not determined), the IsoFLOP minima, the job's compute utilisation, three findings and
the checks the demo exists to show (issue 12):

(a) at the top budget every MAE run beats its own size's random-init on complex recall by
    at least ``MIN_GAIN``;
(b) complex recall rises with compute: a positive slope whose trunk-clustered 95% interval
    lies above 0;
(c) the loss law is determined: alpha and beta, and their intervals, inside
    ``EXPONENT_RANGE``, and its held-out error on the largest-compute runs at most
    ``MAX_HOLDOUT``;
(d) the best MAE beside every baseline, with its gap to the hand-crafted features;
(e) the curation multiplier (phenoprints vs random) with its trunk-clustered interval.

(a)-(c) are claims: ``scaling demo`` exits 1 when one does not hold. (d) and (e) are
printed as measured. Every stage reuses what an earlier call finished.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from scaling.config import load_config
from scaling.errors import InputError

DEMO_LADDER = Path(__file__).resolve().parent.parent / "jobs" / "configs" / "ladder-demo.yaml"
HEADLINE = "recall_complex"


def _step(n: int, text: str) -> None:
    print(f"\n[{n}] {text}", flush=True)


MIN_GAIN = 0.05  # check (a): complex recall over the size's own random-init, at the top budget
EXPONENT_RANGE = (0.05, 2.0)  # check (c): alpha and beta, and their intervals, inside this
MAX_HOLDOUT = 0.05  # check (c): relative error of the loss law on the largest-compute runs


def at_best_block(ladder_dir: Path):
    """(runs table, complex recall of every run and baseline at its best block)."""
    import pandas as pd

    from analysis.fit import best_blocks, values_at_blocks

    runs = pd.read_parquet(ladder_dir / "runs.parquet")
    metrics = pd.read_parquet(ladder_dir / "metrics.parquet")
    return runs, values_at_blocks(metrics, best_blocks(metrics))[HEADLINE]


def check_top_budget(runs, recall) -> tuple[str, bool]:
    """(a) at the top budget, every MAE run beats its own size's random-init by MIN_GAIN."""
    mae = runs[runs["kind"] == "mae"]
    top = mae[mae["budget"] == mae["budget"].max()]
    gains = {
        r.run_id: recall.get(r.run_id, float("nan"))
        - recall.get(f"random-init_{r.model}", float("nan"))
        for r in top.itertuples()
    }
    holds = bool(gains) and all(g >= MIN_GAIN for g in gains.values())  # NaN fails
    parts = ", ".join(f"{k} {v:+.3f}" for k, v in gains.items())
    return (
        f"at the top budget ({top['budget'].max():.2g} FLOPs) every run beats its size's "
        f"random-init by >= {MIN_GAIN} complex recall: {parts}",
        holds,
    )


def check_rising(fit: dict) -> tuple[str, bool]:
    """(b) complex recall rises with compute: slope > 0, trunk-clustered 95% interval > 0."""
    law = fit.get("metric_laws", {}).get(HEADLINE, {}).get("linear")
    if not law or not law["ci"]["slope"]:
        return "complex recall vs compute: no law was fitted", False
    lo, hi = law["ci"]["slope"]
    return (
        f"complex recall rises with compute: {law['slope']:+.4f} per 10x FLOPs, "
        f"95% trunk-clustered interval [{lo:+.4f}, {hi:+.4f}]",
        bool(law["slope"] > 0 and lo > 0),
    )


def check_loss_law(fit: dict) -> tuple[str, bool]:
    """(c) the loss law is determined: alpha, beta and their intervals inside
    EXPONENT_RANGE, held-out relative error of the largest-compute runs <= MAX_HOLDOUT."""
    law, (lo, hi) = fit["loss_law"], EXPONENT_RANGE
    problems = list(law.get("not_determined") or [])
    for p in ("alpha", "beta"):
        values = [law[p], *(law["ci"].get(p) or [float("nan")] * 2)]
        if not all(lo < v < hi for v in values):
            problems.append(f"{p} {law[p]:.3f} {fmt_ci(law['ci'].get(p))} not inside ({lo}, {hi})")
    err = law.get("holdout_error")
    if err is None or not err <= MAX_HOLDOUT:
        problems.append(f"held-out error {fmt(err)} (at most {MAX_HOLDOUT})")
    text = (
        f"the loss law is determined: alpha {law['alpha']:.3f} {fmt_ci(law['ci'].get('alpha'))}, "
        f"beta {law['beta']:.3f} {fmt_ci(law['ci'].get('beta'))}, held-out error {fmt(err)}"
    )
    return (text + ("; " + "; ".join(problems) if problems else ""), not problems)


def baseline_gap(runs, recall) -> str:
    """(d) the best MAE beside every baseline, with the gap to the hand-crafted features."""
    kind = runs.set_index("run_id")["kind"]
    mae = recall[kind.reindex(recall.index) == "mae"].dropna()
    base = recall[kind.reindex(recall.index) == "baseline"].dropna().sort_values()
    best = mae.idxmax()
    hand = base.get("handcrafted", float("nan"))
    reached = "reached" if mae.max() >= hand else "did not reach"
    others = ", ".join(f"{k} {v:.3f}" for k, v in base.items())
    return (
        f"best MAE {best} complex recall {mae.max():.3f} {reached} the hand-crafted features "
        f"{hand:.3f} (gap {mae.max() - hand:+.3f}); baselines: {others}"
    )


def curation_multiplier(fit: dict) -> str:
    """(e) phenoprints vs random: the effective-compute multiplier (how many times the
    compute random data needs to reach the phenoprints metric) and its interval."""
    cur = fit.get("curation", {}).get(HEADLINE) or {}
    if cur.get("multiplier") is None:
        return f"curation multiplier: not determined ({cur.get('reason') or 'no law'})"
    return (
        f"{cur['reference']} curation is worth {cur['multiplier']:.2g}x the training compute "
        f"of {cur['other']} for complex recall, 95% trunk-clustered interval "
        f"{fmt_ci(cur['ci'], 2)} at {cur['at_flops']:.2g} FLOPs"
    )


def checks(ladder_dir: Path, fit: dict) -> list[tuple[str, bool | None]]:
    """The demo's claims, each (sentence, holds); None: printed, not a pass/fail claim."""
    runs, recall = at_best_block(ladder_dir)
    return [
        check_top_budget(runs, recall),
        check_rising(fit),
        check_loss_law(fit),
        (baseline_gap(runs, recall), None),
        (curation_multiplier(fit), None),
    ]


def fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}"


def fmt_ci(pair, digits: int = 3) -> str:
    return "[n/a]" if not pair else f"[{pair[0]:.{digits}g}, {pair[1]:.{digits}g}]"


def law_lines(fit: dict) -> list[str]:
    """The loss law (or why it is not determined) and the IsoFLOP minima, for the console."""
    law, ci = fit["loss_law"], fit["loss_law"]["ci"]
    terms = " ".join(
        f"{p} {law[p]:.3g} {fmt_ci(ci.get(p))}" for p in ("E", "A", "B", "alpha", "beta")
    )
    if law.get("determined", True):
        co = fit["compute_optimal"]
        lines = [f"loss law L = E + A/N^alpha + B/D^beta: {terms}"]
        lines.append(f"N_opt ~ C^{co['n_exponent']:.2f} {fmt_ci(co['ci']['n_exponent'], 2)}")
    else:
        lines = [f"loss law: NOT DETERMINED ({'; '.join(law['not_determined'])}); fit: {terms}"]
    iso = fit.get("isoflop") or {}
    for b in iso.get("budgets", []):
        n = (
            f"N* {b['n_opt']:.3g} {fmt_ci(b['n_opt_ci'])}"
            if b["determined"]
            else f"not determined ({b['reason']})"
        )
        lines.append(f"IsoFLOP {b['flops']:.2g} FLOPs ({b['n_runs']} runs): {n}")
    if iso.get("determined"):
        lines.append(f"IsoFLOP N* ~ C^{iso['n_exponent']:.2f} {fmt_ci(iso['n_exponent_ci'], 2)}")
    return lines


def delivered_flops(runs, cooldown: float) -> float:
    """Training FLOPs a ladder delivered, from its runs' own accounting (``runs.parquet``):
    every trunk's (or lone run's) FLOPs, plus each WSD branch's cool-down, which is all a
    branch trains beyond its trunk (ARCHITECTURE section 4, compute utilisation)."""
    from scaling.train.schedules import branch_start

    mae = runs[runs["kind"] == "mae"]
    own = mae["wsd_trunk"].isna() | (mae["wsd_trunk"] == mae["run_id"])
    total = float(mae.loc[own, "flops"].sum())
    for _, r in mae[~own].iterrows():
        steps = int(r["steps"])
        total += float(r["flops"]) * (steps - branch_start(steps, cooldown)) / steps
    return total


def utilisation(ladder_dir: Path, cooldown: float, wall_s: float) -> dict:
    """The job's compute utilisation: delivered training FLOPs over wall seconds times this
    machine's float32 dense GEMM peak on all its cores, measured now."""
    import os

    import pandas as pd
    import torch

    from scaling.bench import gemm_peak

    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    peak = gemm_peak("fp32")
    torch.set_num_threads(threads)
    flops = delivered_flops(pd.read_parquet(ladder_dir / "runs.parquet"), cooldown)
    return {"flops": flops, "wall_s": wall_s, "peak": peak, "share": flops / (wall_s * peak)}


def demo(out="demo-out", preset: str = "small", config=None, overrides=()) -> dict:
    from analysis.fit import fit as fit_laws
    from analysis.fit import write_json
    from analysis.report import report
    from scaling.ladder.grid import ladder
    from scaling.shards.inspect import inspect_dataset
    from scaling.world.synth import synthesize

    out = Path(out).resolve()
    world, ladder_dir = out / "world", out / "ladder"
    config = config or DEMO_LADDER
    if not Path(config).is_file():
        raise InputError(f"{config}: the demo ladder's configuration is missing")
    # the whole configuration is checked before anything is made
    cfg = load_config(
        config,
        [f"world.preset={preset}", f"data.path={world}", f"run.dir={ladder_dir}", *overrides],
    )
    from scaling.parallel import init_ray

    t0 = time.perf_counter()
    init_ray(logs=False)  # the workers' output stays in Ray's logs; the demo's own leads
    _step(1, f"synthesise the '{preset}' world -> {world}")
    info = world / "world.json"
    if info.is_file() and json.loads(info.read_text()).get("preset") == preset:
        print(f"reusing {world} (delete it to render again)")
    else:
        synthesize(world, preset=preset, seed=cfg.world.seed, overwrite=True)
    _step(2, "inspect every shard")
    s = inspect_dataset(world)
    print(
        f"{s['experiments']} experiments, {s['plates']} plates, {s['wells']} wells, "
        f"{s['sites']} sites, {s['perturbations']} perturbations, "
        f"{s['control_wells']} control wells, {s['bytes'] / 2**20:.0f} MiB"
    )
    ld = cfg.ladder
    _step(
        3,
        f"the ladder: {len(ld.sizes)} sizes x {len(ld.curations)} curations x "
        f"{len(ld.budgets)} budgets ({', '.join(f'{b:.2g}' for b in ld.budgets)} "
        f"{ld.budget_unit}) -> {ladder_dir}",
    )
    r = ladder(cfg)
    if r["failed"]:
        for run_id, err in r["failed"].items():
            print(f"failed: {run_id} ({err})", file=sys.stderr)
        print(
            f"{len(r['failed'])} ladder runs failed; run the demo again to retry them "
            "(finished runs are reused)",
            file=sys.stderr,
        )
        return {"failed": r["failed"], "checks": []}
    _step(4, f"fit the scaling laws -> {ladder_dir / 'fit'}")
    fit = fit_laws(ladder_dir / "runs.parquet", ladder_dir / "metrics.parquet", ladder_dir / "fit")
    print("\n".join(law_lines(fit)))
    wall = time.perf_counter() - t0  # the job up to its report
    use = utilisation(ladder_dir, cfg.train.cooldown, wall)
    write_json(use, ladder_dir / "utilisation.json")  # the report shows it
    _step(5, f"write the report -> {ladder_dir / 'report'}")
    rep = report(ladder_dir)
    claims = checks(ladder_dir, fit)
    print(
        f"\ncompute utilisation: {use['flops']:.3g} training FLOPs delivered in {wall:.0f} s, "
        f"{use['share']:.1%} of this machine's float32 GEMM peak ({use['peak'] / 1e9:.0f} GFLOP/s)"
    )
    total = time.perf_counter() - t0
    print(f"\ndone in {total / 60:.1f} min. The report: {rep['html']}\nFindings:")
    for line in rep["findings"]:
        print(f"  - {line}")
    print("Checks:")
    for sentence, holds in claims:
        print(f"  [{'info' if holds is None else 'ok' if holds else 'NOT MET'}] {sentence}")
    return {
        "world": str(world),
        "ladder": str(ladder_dir),
        "report": str(rep["html"]),
        "findings": rep["findings"],
        "checks": claims,
        "runs": r["runs"],
        "wall_s": round(total, 1),
        "utilisation": use,
    }
