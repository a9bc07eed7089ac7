"""``scaling evaluate``: every block of one model, embedded and scored, beside baselines.

Output (``OUT``, written under a hidden sibling and renamed into place)::

    embeddings/{model}/block_{b:02d}.parquet   well embeddings (contract layout)
    metrics.parquet                            model, block, metric, value (tidy)
    summary.json                               the best block b* and its metrics, per model

``model`` is ``mae`` (the checkpoint; blocks 1..depth as the paper counts them) and, with
baselines, ``random-init`` (the same ViT, untrained), ``handcrafted`` (CellProfiler-like
features) and ``pixel-pca`` (raw pixels); the last two have one embedding, ``block`` 0.

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

BASELINES = ("random-init", "handcrafted", "pixel-pca")


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
    baselines: bool = True,
    tvn: bool = True,
    batch_size: int = 256,
    actors: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Embed every block of the checkpoint's model, score it and the baselines; write OUT."""
    spec = load_spec(checkpoint)
    check_out(out, checkpoint_inputs(checkpoint), overwrite)
    specs = {"mae": spec}
    if baselines:
        specs["random-init"] = ModelSpec(spec.cfg, None, seed)
    return evaluate_models(
        specs,
        data,
        out,
        features=baselines,
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
    features: bool = False,
    tvn: bool = True,
    batch_size: int = 256,
    actors: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    info: dict | None = None,
) -> dict:
    """Embed every block of each named model (and, with ``features``, the hand-crafted and
    pixel baselines), score them on ``data`` and write OUT; returns the summary."""
    ds = open_dataset(data)
    perturbations, relationships = read_truth(ds.truth)
    compounds = read_compounds(ds.truth)
    weights = [Path(s.weights).parent for s in specs.values() if s.weights is not None]
    out = check_out(out, [data, ds.root, *weights], overwrite)  # before any embedding
    actors = actors or default_actors()

    models = {}
    for name, s in specs.items():
        wells, e = embed_wells(ds, s, batch_size=batch_size, actors=actors, progress=progress)
        models[name] = (wells, e, list(range(1, s.depth + 1)))
    if features:
        from scaling.evaluate.baselines import handcrafted_wells, pixel_pca_wells

        for name, fn in (("handcrafted", handcrafted_wells), ("pixel-pca", pixel_pca_wells)):
            wells, x = fn(ds, progress=progress)
            models[name] = (wells, x[None], [0])

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
            }
        metrics = pd.concat(frames)[["model", "block", "metric", "value"]]
        metrics.to_parquet(tmp / "metrics.parquet", index=False)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
