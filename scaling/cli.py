"""The ``scaling`` command line. Exit 0 on success, 2 on bad input (one line on stderr
naming the file or key at fault), 1 otherwise."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from scaling.errors import InputError


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML configuration file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one configuration key (repeatable), e.g. data.crop=64",
    )


def cmd_synth(a) -> int:
    from scaling.world.synth import synthesize

    s = synthesize(a.out, preset=a.preset, seed=a.seed, overwrite=a.overwrite)
    what = f"{s['sites']} sites"
    if "embedding_dim" in s:
        what = f"embeddings.parquet ({s['embedding_dim']} dimensions, no images)"
    if "compounds" in s:
        what += f", {s['compounds']} compounds ({s['treatments']} treatments)"
    print(
        f"wrote {a.out}: {s['genes']} genes ({s['active_genes']} active), {s['complexes']} "
        f"complexes, {s['pathways']} pathways, {s['experiments']} experiments, "
        f"{s['plates']} plates, {s['wells']} wells, {what}"
    )
    return 0


def cmd_inspect(a) -> int:
    from scaling.shards.inspect import inspect_dataset

    s = inspect_dataset(a.dir, channels=a.channels, progress=not a.json)
    if a.json:
        print(json.dumps(s))
    else:
        print(f"{a.dir}: OK")
        for k, v in s.items():
            print(f"  {k:14s} {v}")
    return 0


def cmd_ingest(a) -> int:
    from scaling.shards.ingest import ingest

    s = ingest(
        a.images,
        a.metadata,
        a.out,
        pattern=a.pattern,
        mapping=a.map,
        control=a.control,
        overwrite=a.overwrite,
        layout=a.layout,
        platemap=a.platemap,
        channels=a.channels,
        plane=a.plane,
        illum=a.illum,
        illum_sigma=a.illum_sigma,
        path_map=a.path_map,
    )
    print(
        f"wrote {a.out}: {s['plates']} plates, {s['wells']} wells, {s['sites']} sites, "
        f"{s['channels']} channels, {s['dtype']} ({', '.join(s['channel_names'])})"
    )
    if s["left_out"]:
        print(f"left out {', '.join(s['left_out'])} (name them in --channels to keep them)")
    if s["illum"]:
        print(f"illumination-corrected; flat fields in {Path(a.out) / 'illum'}")
    return 0


def cmd_curate(a) -> int:
    from scaling.curate.select import curate

    wells = a.wells
    if a.like is not None:
        try:
            wells = json.loads((Path(a.like) / "curation.json").read_text())["wells"]
        except (OSError, ValueError, KeyError) as e:
            raise InputError(f"--like: {a.like}/curation.json: not a curation ({e})") from None
    s = curate(
        a.data,
        a.strategy,
        a.out,
        seed=a.seed,
        overwrite=a.overwrite,
        fraction=a.fraction,
        wells_count=wells,
        reference=a.reference,
        block=a.block,
        p_value=a.p_value,
        min_experiments=a.min_experiments,
        min_wells=a.min_wells,
        control_fraction=a.control_fraction,
    )
    print(
        f"wrote {a.out}: {s['strategy']} selection of {s['wells']} of {s['source_wells']} "
        f"wells ({s['control_wells']} controls, {s['perturbations']} perturbations)"
    )
    if s["truth"]:
        t = s["truth"]
        print(
            f"  against the truth: {t['kept_genes']} genes kept, precision {t['precision']:.2f}, "
            f"recall {t['recall']:.2f} of {t['active_genes']} active genes"
        )
    return 0


def cmd_stream(a) -> int:
    from scaling.config import load_config
    from scaling.stream.preview import preview

    cfg = load_config(a.config, [f"data.path={a.data}"] * bool(a.data) + a.overrides)
    preview(cfg, batches=a.batches, montage=a.montage)
    return 0


def cmd_pretrain(a) -> int:
    from scaling.config import load_config
    from scaling.train.pretrain import pretrain

    cfg = load_config(a.config, a.overrides)
    r = pretrain(cfg, resume=a.resume)
    print(
        f"step {r['step']}: validation loss {r['loss']:.4f}, {r['crops_seen']} crops, "
        f"{r['flops']:.3g} FLOPs, {r['restarts']} restarts; {cfg.run.dir}/result.json"
    )
    return 0


def cmd_ladder(a) -> int:
    from scaling.config import load_config
    from scaling.ladder.grid import ladder

    r = ladder(load_config(a.config, a.overrides), max_runs=a.max_runs)
    print(
        f"{r['runs']} runs: {len(r['ran'])} ran, {r['skipped']} already done, "
        f"{len(r['failed'])} failed, in {r['wall_s']:.0f} s; {r['runs_parquet']}, "
        f"{r['metrics_parquet']}"
    )
    for run_id, err in r["failed"].items():
        print(f"failed: {run_id} ({err}); run the same command again to retry", file=sys.stderr)
    return 1 if r["failed"] else 0


def cmd_fit(a) -> int:
    from analysis.fit import fit

    f = fit(a.runs, a.metrics, a.out, bootstrap=a.bootstrap, seed=a.seed, figures=True)
    law = f["loss_law"]
    if law.get("determined") is False:
        print(f"loss law not determined: {'; '.join(law['not_determined'])}")
    else:
        print(
            f"loss law L = {law['E']:.3g} + {law['A']:.3g}/N^{law['alpha']:.3f} + "
            f"{law['B']:.3g}/D^{law['beta']:.3f} over {law['n_runs']} runs; "
            f"N_opt ~ C^{f['compute_optimal']['n_exponent']:.2f}"
        )
    for m, law in f.get("metric_laws", {}).items():
        lin, held = law["linear"], law["holdout_error"]
        ci = lin["ci"]["slope"]
        print(
            f"  {m}: {lin['slope']:+.4f} per decade of compute "
            + (f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "(no interval)")
            + (f", held-out error {held:.4f}" if held is not None else ", no held-out runs")
        )
    for name, why in f.get("skipped", {}).items():
        print(f"  skipped {name}: {why}")
    figures = len(list((Path(a.out) / "figures").glob("*")))
    print(f"wrote {Path(a.out) / 'fit.json'} and {figures} figure files")
    return 0


def cmd_report(a) -> int:
    from analysis.report import report

    r = report(a.dir, out=a.out, budget_flops=a.budget)
    print(f"wrote {r['html']} and {r['markdown']}")
    for line in r["findings"]:
        print(f"  - {line}")
    return 0


def cmd_sweep(a) -> int:
    from scaling.config import load_config
    from scaling.sweep.tune import sweep

    cfg = load_config(a.config, a.overrides)
    r = sweep(cfg)
    b = r["best"]
    params = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in b["params"].items()
    )
    print(
        f"{r['trials']} trials{' (restored)' if r['restored'] else ''}: "
        f"{r['stopped_early']} stopped early by ASHA, {r['errored']} failed; {r['trials_csv']}"
    )
    print(f"best {b['trial_id']}: {r['metric']} {b[r['metric']]:.4f} at step {b['steps']}")
    print(f"  {params}")
    print(f"  config: {r['best_yaml']}")
    return 0


def cmd_plan(a) -> int:
    from scaling.capacity import detect, from_launcher
    from scaling.config import load_config
    from scaling.estimate import Assumptions, plan, render

    assumed = Assumptions(mfu=a.mfu, storage_mbps=a.storage_mbps, gpu_memory_gb=a.gpu_memory_gb)
    # DeepSpeed's logger (imported by the checks) writes to the stdout it finds: not ours
    with contextlib.redirect_stdout(sys.stderr):
        cfg = load_config(a.config, a.overrides)
        cap = from_launcher(a.cluster) if a.cluster else detect(start_ray=False)
        p = plan(cfg, cap, assumed)
    print(json.dumps(p) if a.json else render(p, a.config or "defaults"))
    return 0


def _bench_text(line: dict) -> str:
    def num(v, fmt=".4g"):
        return "null" if v is None else format(v, fmt)

    return (
        f"{line['bench']:6s} {line['case']:24s} ours {num(line['ours'])} "
        f"anchor {num(line['anchor_value'])} {line['unit']} ratio {num(line['ratio'], '.3f')}"
    )


def cmd_bench(a) -> int:
    from scaling.bench import run_bench

    if a.dry and a.what != "gpu":
        raise InputError("--dry: only `scaling bench gpu` has a dry mode")
    failed = False
    for line in run_bench(a.what, data=a.data, dry=a.dry):
        print(json.dumps(line) if a.json else _bench_text(line), flush=True)
        failed |= line.get("ok") is False  # a check inside a bench (gpu: the resume)
    return 1 if failed else 0


def cmd_evaluate(a) -> int:
    from scaling.evaluate.evaluate import evaluate

    s = evaluate(
        a.checkpoint,
        a.data,
        a.out,
        baselines=False if a.no_baselines else [b for b in a.baselines.split(",") if b],
        tvn=not a.no_tvn,
        batch_size=a.batch_size,
        actors=a.actors,
        seed=a.seed,
        overwrite=a.overwrite,
        sites_per_well=a.sites_per_well,
    )
    print(f"wrote {a.out}: embeddings/, metrics.parquet, summary.json")
    for model, m in s.items():
        if isinstance(m, dict):
            shown = ", ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                for k, v in m.items()
                if k not in ("best_block", "blocks")
            )
            print(f"  {model:12s} block {m['best_block']:2d}/{m['blocks']}: {shown}")
    return 0


def cmd_benchmark(a) -> int:
    from scaling.annotations import parse_sources
    from scaling.atomic import check_out
    from scaling.evaluate.maps import benchmark

    sources = parse_sources(a.sources) if a.sources else []
    check_out(a.out, [a.embeddings, a.truth, *a.relationships], overwrite=True)  # replaced
    r = benchmark(
        a.embeddings,
        a.truth,
        a.out,
        tvn=not a.no_tvn,
        seed=a.seed,
        sources=sources,
        relationships=a.relationships,
        min_score=a.min_score,
        string_info=a.string_info,
    )
    c = r["consistency"]
    recall = "  ".join(f"{k} {v:.3f}" for k, v in r["recall"].items())
    print(f"wrote {a.out}: {r['n_perturbations']} perturbations, TVN {'on' if r['tvn'] else 'off'}")
    print(f"  recall       {recall}  (chance {r['chance']:.2f})")
    print(
        f"  consistency  KS {c['ks']:.3f}  CvM {c['cvm']:.4g}  "
        f"significant {c['fraction_significant']:.3f}"
    )
    m = r["map"]
    cons = "  ".join(f"{k} {v['mean_map']:.3f}" for k, v in m["consistency"].items())
    sig = "  ".join(f"{k} {v['fraction_significant']:.3f}" for k, v in m["consistency"].items())
    print(
        f"  mAP          activity {m['activity']['mean_map']:.3f} "
        f"(significant {m['activity']['fraction_significant']:.3f})  consistency {cons} "
        f"(significant {sig})"
    )
    if "compound_gene" in r:
        g = r["compound_gene"]
        print(
            f"  compounds    AP {g['ap']:.3f}  random {g['random_mean']:.3f} +- "
            f"{g['random_sd']:.3f}  z {g['z']:.1f}  ({g['n_compounds']} compounds)"
        )
    return 0


def cmd_sources(a) -> int:
    from scaling import annotations as an

    if a.action == "fetch":
        print(f"annotation sources in {an.fetch()}")
        return 0
    root = an.ensure()
    for name, (file, licence) in an.SOURCES.items():
        n = len(an.read_pairs(root / file, name))
        print(f"{name:9s} {n:7d} pairs  {licence:13s} {root / file}")
    return 0


def cmd_export(a) -> int:
    from scaling.model.export import export

    c = export(a.checkpoint, a.out, evaluation=a.evaluation, overwrite=a.overwrite)
    s = c["size"]
    print(
        f"wrote {a.out}: model.safetensors (encoder {s['name']}, {s['depth']} blocks of "
        f"{s['width']}, float32, no decoder), config.json ({c['channels']} channels: "
        f"{', '.join(c['channel_names'])}), README.md"
    )
    return 0


def cmd_embed(a) -> int:
    from scaling.evaluate.screen import embed_screen

    s = embed_screen(
        a.checkpoint,
        a.data,
        a.out,
        block=a.block,
        evaluation=a.evaluation,
        batch_size=a.batch_size,
        actors=a.actors,
        overwrite=a.overwrite,
    )
    resumed = f", {s['resumed_wells']} from an interrupted run" if s["resumed_wells"] else ""
    print(
        f"wrote {s['out']}: {s['wells']} wells at block {s['block']}/{s['depth']}"
        f"{resumed}, {s['seconds']:.1f} s"
    )
    return 0


def cmd_demo(a) -> int:
    from scaling.demo import demo

    r = demo(a.out, preset=a.preset, config=a.config, overrides=a.overrides)
    if r.get("failed"):
        return 1
    return 0 if all(holds is not False for _, holds in r["checks"]) else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scaling", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="render a synthetic Cell Painting world")
    s.add_argument("--out", required=True)
    s.add_argument("--preset", default="tiny")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=cmd_synth)

    s = sub.add_parser("inspect", help="validate every shard of a dataset and summarise it")
    s.add_argument("dir")
    s.add_argument(
        "--channels", type=int, help="expected channels (default: as many as the shards name)"
    )
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_inspect)

    s = sub.add_parser("ingest", help="real plates (image files + metadata CSVs) -> shards")
    s.add_argument(
        "--layout",
        choices=["rxrx", "harmony", "jump"],
        default="rxrx",
        help="rxrx: files by --pattern + metadata CSV (default); harmony: Phenix/Harmony "
        "file names; jump: a CellProfiler LoadData CSV (--metadata) + --platemap",
    )
    s.add_argument(
        "--images",
        help="folder of PNG/TIFF files (rxrx, harmony); jump: the folder relative "
        "PathName_Orig* are under (default: the LoadData CSV's folder)",
    )
    s.add_argument(
        "--metadata",
        required=True,
        help="CSV with one row per well or per site; jump: the LoadData CSV",
    )
    s.add_argument("--out", required=True)
    s.add_argument(
        "--pattern",
        help="file path template under --images (default: the RxRx layout, or Harmony's)",
    )
    s.add_argument("--platemap", help="jump: plate map CSV/TSV (well -> perturbation, control)")
    s.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="CSV column for a field (experiment, plate, well, site, perturbation, "
        "is_control); jump: plate-map columns, experiment in the LoadData CSV",
    )
    s.add_argument(
        "--control",
        metavar="COLUMN=VALUE",
        help="rows where COLUMN equals VALUE are negative controls "
        "(jump default: Metadata_control_type=negcon)",
    )
    s.add_argument(
        "--channels",
        metavar="LIST",
        help="channel names in order: jump picks by name (default DNA,ER,RNA,AGP,Mito, "
        "bright-field left out); numbered files: NAME,... for all or N=NAME,... to pick",
    )
    s.add_argument(
        "--plane", metavar="N|max", help="focal plane to keep (1-based) or max projection"
    )
    s.add_argument(
        "--illum",
        action="store_true",
        help="divide each plate's images by its flat fields (out/illum/{plate}.npy)",
    )
    s.add_argument(
        "--illum-sigma",
        type=float,
        metavar="PX",
        help="Gaussian smoothing of the flat fields (default: image side / 20)",
    )
    s.add_argument(
        "--path-map",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="jump: replace a PathName_Orig* prefix (e.g. s3://cellpainting-gallery/=/data/)",
    )
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=cmd_ingest)

    s = sub.add_parser("curate", help="select wells (a manifest, pixels are not copied)")
    s.add_argument("--data", required=True)
    s.add_argument("--strategy", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--fraction", type=float, help="share of wells to keep (random)")
    s.add_argument("--wells", type=int, help="number of wells to keep (random)")
    s.add_argument("--like", help="keep as many wells as this curation (random)")
    s.add_argument(
        "--reference",
        help="checkpoint or run folder whose embeddings judge consistency "
        "(phenoprints; default: hand-crafted features)",
    )
    s.add_argument("--block", type=int, help="block of --reference to use (default: last)")
    s.add_argument("--p-value", type=float, help="consistency threshold (phenoprints, 0.01)")
    s.add_argument("--min-experiments", type=int, help="phenoprints: default 3, capped")
    s.add_argument("--min-wells", type=int, help="phenoprints: default 20, capped")
    s.add_argument("--control-fraction", type=float, help="phenoprints: share of controls, 0.3")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=cmd_curate)

    s = sub.add_parser("stream", help="run the Ray Data crop stream, report throughput")
    s.add_argument("--data", help="dataset or curation folder (sets data.path)")
    _config_args(s)
    s.add_argument("--batches", type=int, default=20)
    s.add_argument("--montage", help="write the first crops as a PNG montage here")
    s.set_defaults(fn=cmd_stream)

    s = sub.add_parser("pretrain", help="one DeepSpeed MAE run on Ray Train")
    _config_args(s)
    s.add_argument("--resume", help="a checkpoint folder to start from")
    s.set_defaults(fn=cmd_pretrain)

    s = sub.add_parser("sweep", help="a Ray Tune search over pretraining runs, with ASHA")
    _config_args(s)
    s.set_defaults(fn=cmd_sweep)

    s = sub.add_parser("ladder", help="the grid of sizes x curations x budgets: runs, metrics")
    _config_args(s)
    s.add_argument("--max-runs", type=int, help="stop after this many runs finish")
    s.set_defaults(fn=cmd_ladder)

    s = sub.add_parser("fit", help="scaling laws of loss and metrics, fit.json and plots")
    s.add_argument("--runs", required=True, help="runs.parquet of a ladder")
    s.add_argument("--metrics", help="metrics.parquet of the same ladder")
    s.add_argument("--out", required=True, help="folder for fit.json and figures/")
    s.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (200)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_fit)

    s = sub.add_parser("report", help="the HTML and Markdown report of a ladder")
    s.add_argument("dir", help="a ladder folder (runs.parquet, metrics.parquet, fit/)")
    s.add_argument("--out", help="report folder (default DIR/report)")
    s.add_argument("--budget", type=float, help="FLOPs to recommend a size and data for")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("plan", help="what a ladder or sweep will do on a cluster, no Ray")
    _config_args(s)
    s.add_argument("--cluster", help="a Ray cluster launcher YAML (default: this machine)")
    s.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation (0.4)")
    s.add_argument(
        "--storage-mbps",
        type=float,
        default=1500.0,
        help="MiB/s a node reads from storage (1500: EFS elastic throughput, per client)",
    )
    s.add_argument("--gpu-memory-gb", type=float, default=80.0, help="per GPU (80: H100)")
    s.add_argument("--json", action="store_true", help="one JSON object")
    s.set_defaults(fn=cmd_plan)

    s = sub.add_parser("bench", help="benchmarks, ours beside an anchor")
    s.add_argument("what", choices=["data", "model", "eval", "flops", "train", "gpu", "embed"])
    s.add_argument("--json", action="store_true", help="one JSON object a line")
    s.add_argument(
        "--dry", action="store_true", help="gpu: the same steps on the CPU with tiny stand-ins"
    )
    s.add_argument(
        "--data", help="dataset to read (default: a fresh world, 'genome' for eval, else 'small')"
    )
    s.set_defaults(fn=cmd_bench)

    s = sub.add_parser("evaluate", help="every block of a checkpoint, scored, with baselines")
    s.add_argument("--checkpoint", required=True, help="checkpoint folder or run folder")
    s.add_argument("--data", required=True, help="dataset or curation folder (with truth/)")
    s.add_argument("--out", required=True)
    s.add_argument("--no-baselines", action="store_true", help="score the checkpoint only")
    s.add_argument(
        "--baselines",
        default="random-init,handcrafted,pixel-pca",
        help="comma-separated baselines (default: %(default)s; also: cellprofiler)",
    )
    s.add_argument(
        "--sites-per-well", type=int, help="cellprofiler: a seeded sample of sites per well"
    )
    s.add_argument("--no-tvn", action="store_true", help="benchmarks without TVN")
    s.add_argument("--batch-size", type=int, default=256, help="crops per inference batch")
    s.add_argument(
        "--actors",
        type=int,
        help="embedding workers: GPU actors, or CPU tasks at once (default: 1 per GPU or node)",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=cmd_evaluate)

    s = sub.add_parser("benchmark", help="map benchmarks of any well embeddings (TVN on)")
    s.add_argument("--embeddings", required=True, help="well embeddings Parquet")
    s.add_argument("--truth", help="folder with perturbations/relationships")
    s.add_argument("--out", required=True, help="JSON file to write")
    s.add_argument(
        "--sources", help="real annotation sources: corum,humap,reactome,signor,stringdb"
    )
    s.add_argument(
        "--relationships",
        action="append",
        default=[],
        metavar="FILE",
        help="a relationships file (pairs, CORUM table, GMT, STRING links); repeatable",
    )
    s.add_argument("--min-score", type=int, default=700, help="STRING links: least score (700)")
    s.add_argument("--string-info", help="STRING protein.info file mapping 9606.ENSP ids")
    s.add_argument("--no-tvn", action="store_true", help="benchmarks without TVN")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_benchmark)

    s = sub.add_parser("sources", help="real annotation sources (CORUM, hu.MAP, ...): the cache")
    s.add_argument("action", choices=["fetch", "list"], help="fetch: download; list: summarise")
    s.set_defaults(fn=cmd_sources)

    s = sub.add_parser("export", help="a checkpoint's encoder as a self-contained model folder")
    s.add_argument("--checkpoint", required=True, help="checkpoint folder or run folder")
    s.add_argument("--out", required=True, help="folder: model.safetensors, config.json, card")
    s.add_argument("--evaluation", help="a `scaling evaluate` output for the model card")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("embed", help="well embeddings of a whole screen at one block")
    s.add_argument("--checkpoint", required=True, help="checkpoint folder or run folder")
    s.add_argument("--data", required=True, help="dataset or curation folder (no truth needed)")
    s.add_argument("--out", required=True, help="the embeddings, a .parquet file")
    s.add_argument("--block", default="best", help="block number, or best: b* (default best)")
    s.add_argument("--evaluation", help="`scaling evaluate` output whose b* --block best reads")
    s.add_argument("--batch-size", type=int, default=256, help="tiles per inference batch (256)")
    s.add_argument(
        "--actors",
        type=int,
        help="embedding workers: GPU actors, or CPU tasks at once (default: from the cluster)",
    )
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=cmd_embed)

    s = sub.add_parser("demo", help="the main job on the synthetic world, end to end")
    s.add_argument("--out", default="demo-out", help="folder for everything (demo-out)")
    s.add_argument("--preset", default="small", help="the world's preset (small)")
    _config_args(s)
    s.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
