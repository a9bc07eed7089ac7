"""``scaling bench eval``: the whole map benchmark of a whole-genome world (TVN, aggregation,
known-relationship recall of every source, replicate consistency) against the contract's
anchor, one float32 Gram matrix ``U @ U.T`` of the same aggregated, normalised map,
measured in the same run (ARCHITECTURE section 6): no exact cosine-based recall can beat
it, since every pair's cosine is needed for the null. The anchor writes into an output
allocated once, off the clock (a fresh 1.3 GB result would add page faults to the
anchor, not to us).

The world is the ``genome`` preset (about 18,000 perturbations x 128 dimensions, ~79,000
wells), synthesised into a temporary folder unless ``--data`` names one made by
``scaling synth --preset genome``. Cases, each the median of ``REPEATS`` interleaved runs
(anchor, then ours, so both see the same machine load): ``genome-map`` (``map_benchmarks``
from well embeddings to the contract JSON, mAP included), ``genome-recall-only``
(``relationship_recall`` of every source on the aggregated map) and ``genome-map-mAP``
(``meanap.map_scores``: phenotypic activity on the TVN-corrected wells and consistency of
every source on the aggregated map).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from scaling.bench import line
from scaling.errors import InputError
from scaling.evaluate.maps import map_benchmarks
from scaling.evaluate.meanap import map_scores, null_aps
from scaling.evaluate.recall import aggregate, relationship_recall, unit_rows
from scaling.evaluate.table import read_embeddings, read_truth
from scaling.evaluate.tvn import tvn

REPEATS = 3
ANCHOR = "float32 Gram matrix of the map"


def _seconds(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_eval(path: str | None = None, repeats: int = REPEATS):
    tmp, synth_s = None, None
    if path is None:
        from scaling.world.synth import synthesize

        tmp = tempfile.TemporaryDirectory(prefix="bench-eval-")
        path = f"{tmp.name}/genome"
        synth_s, _ = _seconds(lambda: synthesize(path, preset="genome", progress=False))
    try:
        emb = Path(path) / "embeddings.parquet"
        if not emb.is_file():
            raise InputError(
                f"--data: {emb}: no such file (make a world with scaling synth --preset genome)"
            )
        wells, X = read_embeddings(emb)
        perturbations, relationships = read_truth(Path(path) / "truth")
        ctrl, exp = wells["is_control"].to_numpy(), wells["experiment"].to_numpy()
        Xt = tvn(X, ctrl, exp)
        names, M = aggregate(wells, Xt)
        U = unit_rows(M)

        G = np.empty((len(U), len(U)), dtype=np.float32)  # allocated (and touched) off the clock
        G.fill(0.0)

        def gram() -> None:
            np.dot(U, U.T, out=G)  # the anchor: every cosine of the map, float32

        times = {"anchor": [], "map": [], "recall": [], "mAP": []}
        result = None
        for _ in range(repeats):
            times["anchor"].append(_seconds(gram)[0])
            null_aps.cache_clear()  # each case pays for its mAP nulls, as a first call does
            s, result = _seconds(
                lambda: map_benchmarks(wells, X, perturbations, relationships, tvn=True)
            )
            times["map"].append(s)
            times["recall"].append(
                _seconds(lambda: relationship_recall(names, M, relationships))[0]
            )
            null_aps.cache_clear()
            times["mAP"].append(_seconds(lambda: map_scores(wells, Xt, names, M, relationships))[0])
        med = {k: float(np.median(v)) for k, v in times.items()}
        size = dict(perturbations=len(names), wells=len(wells), dim=int(X.shape[1]))
        extra = dict(synth_s=synth_s) if synth_s is not None else {}
        yield line(
            "eval",
            "genome-map",
            med["map"],
            ANCHOR,
            med["anchor"],
            "s",
            **size,
            recall=result["recall"],
            consistency=result["consistency"],
            map=result["map"],
            **extra,
        )
        yield line("eval", "genome-recall-only", med["recall"], ANCHOR, med["anchor"], "s", **size)
        yield line("eval", "genome-map-mAP", med["mAP"], ANCHOR, med["anchor"], "s", **size)
    finally:
        if tmp is not None:
            tmp.cleanup()
