"""``scaling evaluate``: every block of one model, embedded and scored, beside baselines.

Output (``OUT``, written under a hidden sibling and renamed into place)::

    embeddings/{model}/block_{b:02d}.parquet   well embeddings (contract layout)
    metrics.parquet                            model, block, metric, value (tidy)
    summary.json                               the best block b* and its metrics, per model

``model`` is ``mae`` (the checkpoint; blocks 1..depth as the paper counts them) and, with
baselines, ``random-init`` (the same ViT, untrained), ``handcrafted`` (CellProfiler-like
features) and ``pixel-pca`` (raw pixels), and on request ``cellprofiler`` (cp-measure's
per-cell features, median per well; its summary entry adds ``seconds_per_well``,
``sites_per_well``, ``features`` and ``dropped_features``); the feature baselines have one
embedding, ``block`` 0.

Metrics per block: ``recall_{source}`` (known-relationship recall), ``consistency_ks``,
``consistency_cvm``, ``consistency_fraction_significant`` (all after TVN unless
``tvn=False``), ``probe_{task}`` (test balanced accuracy) and ``probe_{task}_val``
(validation, which chooses b*), ``map_activity``, ``map_activity_fraction_significant``,
``map_consistency_{source}`` and ``map_consistency_{source}_fraction_significant`` (mean
average precision as copairs computes it); where the data's truth has compounds,
``compound_gene_ap`` and ``compound_gene_z`` (compound-gene activity). See
ARCHITECTURE section 4.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from scaling.atomic import atomic_folder, check_out
from scaling.errors import InputError
from scaling.evaluate.embed import (
    ModelSpec,
    default_actors,
    embed_wells,
    find_checkpoint,
    load_spec,
)
from scaling.evaluate.maps import map_benchmarks
from scaling.evaluate.meanap import metric_rows
from scaling.evaluate.probes import probe_blocks
from scaling.evaluate.table import read_compounds, read_truth, write_embeddings
from scaling.progress import bar
from scaling.shards.dataset import open_dataset

BASELINES = ("random-init", "handcrafted", "pixel-pca")  # the default set
KNOWN_BASELINES = BASELINES + ("cellprofiler",)
FEATURES = ("handcrafted", "pixel-pca")  # ``features=True``


def baseline_names(baselines) -> tuple[str, ...]:
    """``True`` (the default set), ``False`` (none), or names, checked against
    ``KNOWN_BASELINES`` (an ``InputError`` naming an unknown one)."""
    if baselines is True:
        return BASELINES
    names = tuple(baselines or ())
    unknown = [n for n in names if n not in KNOWN_BASELINES]
    if unknown:
        raise InputError(
            f"evaluate: unknown baseline(s) {unknown} (known: {', '.join(KNOWN_BASELINES)})"
        )
    return names


def score_blocks(
    wells: pd.DataFrame,
    E: np.ndarray,
    blocks: list[int],
    perturbations: pd.DataFrame,
    relationships: pd.DataFrame,
    tvn: bool = True,
    seed: int = 0,
    progress: bool = True,
    desc: str = "benchmarks",
    compounds: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, int]:
    """E (n_blocks, n_wells, D) -> (tidy metrics block, metric, value; b*). With a compound
    table, also ``compound_gene_ap`` and ``compound_gene_z`` (``maps.map_benchmarks``);
    the probes never see compound wells (they are in no probe task)."""
    probes, best = probe_blocks(wells, E, perturbations, blocks=blocks)
    rows = []
    for _, r in probes.iterrows():
        suffix = "_val" if r["split"] == "validation" else ""
        rows.append((r["block"], f"probe_{r['task']}{suffix}", r["balanced_accuracy"]))
    with bar(total=len(blocks), desc=desc, unit="block", enabled=progress) as b:
        for block, x in zip(blocks, E, strict=True):
            m = map_benchmarks(
                wells, x, perturbations, relationships, tvn=tvn, seed=seed, compounds=compounds
            )
            rows += [(block, f"recall_{s}", v) for s, v in m["recall"].items()]
            rows += [(block, f"consistency_{k}", v) for k, v in m["consistency"].items()]
            rows += [(block, k, v) for k, v in metric_rows(m["map"])]
            if "compound_gene" in m:
                rows += [(block, f"compound_gene_{k}", m["compound_gene"][k]) for k in ("ap", "z")]
            b.update()
    df = pd.DataFrame(rows, columns=["block", "metric", "value"])
    return df.astype({"block": "int64", "value": "float64"}), best


def checkpoint_inputs(checkpoint) -> list[Path]:
    """What reading a checkpoint reads: its folder and, for a run folder, ``result.json``
    (the run folder itself is not an input: ``RUN/eval`` is a fine output)."""
    return [find_checkpoint(checkpoint), Path(checkpoint) / "result.json"]


def evaluate(
    checkpoint,
    data,
    out,
    baselines=True,
    tvn: bool = True,
    batch_size: int = 256,
    actors: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    sites_per_well: int | None = None,
) -> dict:
    """Embed every block of the checkpoint's model, score it and the baselines (True: the
    default ``BASELINES``, False: none, or names); write OUT. ``sites_per_well``: the
    cellprofiler baseline's seeded site sample (None: all sites)."""
    names = baseline_names(baselines)
    spec = load_spec(checkpoint)
    check_out(out, checkpoint_inputs(checkpoint), overwrite)
    specs = {"mae": spec}
    if "random-init" in names:
        specs["random-init"] = ModelSpec(spec.cfg, None, seed)
    return evaluate_models(
        specs,
        data,
        out,
        features=tuple(n for n in names if n != "random-init"),
        sites_per_well=sites_per_well,
        tvn=tvn,
        batch_size=batch_size,
        actors=actors,
        seed=seed,
        overwrite=overwrite,
        progress=progress,
        info={"checkpoint": str(checkpoint)},
    )


def evaluate_models(
    specs: dict[str, ModelSpec],
    data,
    out,
    features=False,
    tvn: bool = True,
    batch_size: int = 256,
    actors: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    info: dict | None = None,
    sites_per_well: int | None = None,
    cpus_per_actor: float | None = None,
) -> dict:
    """Embed every block of each named model (and the feature baselines ``features``
    names; True: the hand-crafted and pixel baselines), score them on ``data`` and write
    OUT; returns the summary. ``actors``, ``cpus_per_actor``: as ``embed_wells``'."""
    features = FEATURES if features is True else baseline_names(features)
    if sites_per_well is not None and sites_per_well < 1:
        raise InputError(f"evaluate: --sites-per-well must be positive, got {sites_per_well}")
    ds = open_dataset(data)
    perturbations, relationships = read_truth(ds.truth)
    compounds = read_compounds(ds.truth)
    weights = [Path(s.weights).parent for s in specs.values() if s.weights is not None]
    out = check_out(out, [data, ds.root, *weights], overwrite)  # before any embedding
    actors = actors or default_actors()

    models = {}
    for name, s in specs.items():
        wells, e = embed_wells(
            ds, s, batch_size, actors=actors, cpus_per_actor=cpus_per_actor, progress=progress
        )
        models[name] = (wells, e, list(range(1, s.depth + 1)))
    extra = feature_baselines(ds, features, seed, sites_per_well, progress)
    models.update({k: v[:3] for k, v in extra.items()})

    frames, summary = [], {**(info or {}), "data": str(data), "tvn": tvn}
    with atomic_folder(out) as tmp:
        for name, (wells, e, blocks) in models.items():
            (tmp / "embeddings" / name).mkdir(parents=True)
            for block, x in zip(blocks, e, strict=True):
                write_embeddings(tmp / "embeddings" / name / f"block_{block:02d}.parquet", wells, x)
            df, best = score_blocks(
                wells,
                e,
                blocks,
                perturbations,
                relationships,
                tvn=tvn,
                seed=seed,
                progress=progress,
                desc=f"score {name}",
                compounds=compounds,
            )
            frames.append(df.assign(model=name))
            at_best = df[df["block"] == best]
            summary[name] = {
                "best_block": int(best),
                "blocks": len(blocks),
                **dict(zip(at_best["metric"], at_best["value"].astype(float), strict=True)),
                **(extra[name][3] if name in extra else {}),
            }
        metrics = pd.concat(frames)[["model", "block", "metric", "value"]]
        metrics.to_parquet(tmp / "metrics.parquet", index=False)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def feature_baselines(ds, names, seed: int, sites_per_well, progress: bool) -> dict:
    """The feature baselines among ``names``: {name: (wells, X[None], [0], summary extras)}."""
    from scaling.evaluate.baselines import handcrafted_wells, pixel_pca_wells

    out = {}
    for name, fn in (("handcrafted", handcrafted_wells), ("pixel-pca", pixel_pca_wells)):
        if name in names:
            wells, x = fn(ds, progress=progress)
            out[name] = (wells, x[None], [0], {})
    if "cellprofiler" in names:
        from scaling.evaluate.cellprofiler import cellprofiler_wells

        wells, x, info = cellprofiler_wells(ds, sites_per_well, seed=seed, progress=progress)
        keys = ("seconds_per_well", "sites_per_well", "features", "dropped_features")
        out["cellprofiler"] = (wells, x[None], [0], {k: info[k] for k in keys})
    return out
