"""``scaling demo``: the main job on the synthetic world, end to end.

Synthesise the world, inspect it, run the demo ladder (curate the world both ways, pretrain
every size x curation x budget, evaluate every block, score the baselines), fit the scaling
laws, write the report, and print where it is with three lines of findings and the two
checks the demo exists to show: the best MAE beats the random-init and pixel baselines on
complex recall, and complex recall rises with training compute (a positive slope whose
interval excludes 0). Every stage reuses what an earlier call finished.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from scaling.config import load_config
from scaling.errors import InputError

DEMO_LADDER = Path(__file__).resolve().parent.parent / "jobs" / "configs" / "ladder-demo.yaml"
HEADLINE = "recall_complex"


def _step(n: int, text: str) -> None:
    print(f"\n[{n}] {text}", flush=True)


def checks(ladder_dir: Path, fit: dict) -> list[tuple[str, bool]]:
    """The demo's two claims, each (sentence, holds)."""
    import pandas as pd

    from analysis.fit import best_blocks, values_at_blocks

    runs = pd.read_parquet(ladder_dir / "runs.parquet")
    metrics = pd.read_parquet(ladder_dir / "metrics.parquet")
    at_best = values_at_blocks(metrics, best_blocks(metrics))[HEADLINE]
    kind = runs.set_index("run_id")["kind"]
    mae = at_best[kind.reindex(at_best.index) == "mae"]
    names = at_best.index
    random_init = at_best[names.str.startswith("random-init")].max()
    pixel = at_best.get("pixel-pca", float("nan"))
    best = mae.idxmax()
    beats = bool(mae.max() > random_init and mae.max() > pixel)
    law = fit.get("metric_laws", {}).get(HEADLINE, {}).get("linear")
    if law:
        lo, hi = law["ci"]["slope"]
        rises = (
            f"complex recall rises with compute: {law['slope']:+.4f} per 10x FLOPs, "
            f"95% interval [{lo:+.4f}, {hi:+.4f}]"
        )
        rising = bool(law["slope"] > 0 and lo > 0)
    else:
        rises, rising = "complex recall vs compute: no law was fitted", False
    return [
        (
            f"best MAE ({best}) complex recall {mae.max():.3f} vs random-init "
            f"{random_init:.3f} and pixel PCA {pixel:.3f}",
            beats,
        ),
        (rises, rising),
    ]


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
        raise RuntimeError(
            f"{len(r['failed'])} ladder runs failed ({', '.join(r['failed'])}); run the demo "
            "again to retry them"
        )
    _step(4, f"fit the scaling laws -> {ladder_dir / 'fit'}")
    fit = fit_laws(ladder_dir / "runs.parquet", ladder_dir / "metrics.parquet", ladder_dir / "fit")
    law = fit["loss_law"]
    print(
        f"loss L(N, D) = {law['E']:.3g} + {law['A']:.3g}/N^{law['alpha']:.3f} + "
        f"{law['B']:.3g}/D^{law['beta']:.3f}; N_opt ~ C^"
        f"{fit['compute_optimal']['n_exponent']:.2f}"
    )
    _step(5, f"write the report -> {ladder_dir / 'report'}")
    rep = report(ladder_dir)
    claims = checks(ladder_dir, fit)
    wall = time.perf_counter() - t0
    use = utilisation(ladder_dir, cfg.train.cooldown, wall)
    print(
        f"\ncompute utilisation: {use['flops']:.3g} training FLOPs delivered in {wall:.0f} s, "
        f"{use['share']:.1%} of this machine's float32 GEMM peak ({use['peak'] / 1e9:.0f} GFLOP/s)"
    )
    print(f"\ndone in {wall / 60:.1f} min. The report: {rep['html']}\nFindings:")
    for line in rep["findings"]:
        print(f"  - {line}")
    print("Checks:")
    for sentence, holds in claims:
        print(f"  [{'ok' if holds else 'NOT MET'}] {sentence}")
    return {
        "world": str(world),
        "ladder": str(ladder_dir),
        "report": str(rep["html"]),
        "findings": rep["findings"],
        "checks": claims,
        "runs": r["runs"],
        "wall_s": round(wall, 1),
        "utilisation": use,
    }
