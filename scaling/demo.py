"""``scaling demo``: the main job on the synthetic world, end to end as far as it exists.

Today: synthesise a world, inspect it, curate it, stream crops through Ray Data and save a
montage. Later stages (pretraining ladder, evaluation, fits, report) extend this job.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from scaling.config import load_config
from scaling.curate.select import curate
from scaling.shards.inspect import inspect_dataset
from scaling.stream.preview import preview
from scaling.world.synth import synthesize


def _step(n: int, text: str) -> None:
    print(f"\n[{n}] {text}", flush=True)


def demo(out="demo-out", preset: str = "small", seed: int = 0) -> dict:
    out = Path(out)
    world, curated = out / "world", out / "curated-random"
    t0 = time.perf_counter()
    _step(1, f"synthesise the '{preset}' world -> {world}")
    info = world / "world.json"
    if info.is_file() and json.loads(info.read_text()).get("preset") == preset:
        print(f"reusing {world} (delete it to render again)")
    else:
        synthesize(world, preset=preset, seed=seed, overwrite=True)
    _step(2, "inspect every shard")
    s = inspect_dataset(world)
    print(
        f"{s['experiments']} experiments, {s['plates']} plates, {s['wells']} wells, "
        f"{s['sites']} sites, {s['perturbations']} perturbations, "
        f"{s['control_wells']} control wells, {s['bytes'] / 2**20:.0f} MiB"
    )
    _step(3, f"curate: a random half of the wells -> {curated}")
    c = curate(world, "random", curated, seed=seed, overwrite=True, fraction=0.5)
    print(f"{c['wells']} of {c['source_wells']} wells ({c['control_wells']} controls)")
    _step(4, "stream random 64 px crops through Ray Data")
    cfg = load_config(None, [f"data.path={curated}", "data.batch_size=64"])
    montage = out / "crops.png"
    r = preview(cfg, batches=20, montage=str(montage))
    print(
        f"\ndone in {time.perf_counter() - t0:.0f} s. Made:\n"
        f"  {world}/   shards, truth tables, world.json\n"
        f"  {curated}/   a curation manifest (no pixels copied)\n"
        f"  {montage}   {r['montage_crops']} crops: colour composite, then channels "
        f"nuclei, ER, actin, RNA, mitochondria, Golgi"
    )
    return {"world": str(world), "curation": str(curated), "montage": str(montage), **r}
