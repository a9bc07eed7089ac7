"""``scaling bench embed``: ``scaling embed`` (Ray Data read tasks and embedding actors,
streamed well means, Parquet parts) against its anchor, a plain PyTorch loop in this
process over the same tiles: read the same row groups, cut the same tiles, run the same
model to the same block in batches of the same size, average to wells (seconds per well,
both measured in the same run, model built and data read inside the clock of both).

A warm-up job on the first plate's wells runs first, untimed: the first Ray Data job of a
process also starts Ray Data's own actors (stats, coordinator), a one-time cost of the
command (``warmup_s`` on every line), not of the screen's size.

Also the saving of truncation: ``scaling embed`` at block ``depth // 2`` (where b* of an
intermediate block lands) against the full encoder, ratio = seconds at b / seconds at depth.

The model is a ``SIZE`` MAE with seeded random weights saved as a checkpoint (speed does
not depend on the weights); the world is the ``small`` preset, synthesised into a
temporary folder unless ``--data`` names a dataset.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from scaling.bench import line
from scaling.config import Config, DataConfig, ModelConfig, dump_config
from scaling.evaluate.embed import ModelSpec, build
from scaling.evaluate.screen import embed_screen
from scaling.evaluate.tiles import read_tiles, screen, tile_tasks

SIZE, CROP, BATCH = "cpu-m", 64, 256
ANCHOR = "plain PyTorch loop over the same tiles, same block and batch"


def random_checkpoint(folder: Path, size: str = SIZE, crop: int = CROP) -> Path:
    """A checkpoint folder (model.safetensors + config.yaml) of a seeded random-init MAE."""
    from safetensors.torch import save_file

    cfg = Config(data=DataConfig(crop=crop), model=ModelConfig(name=size))
    folder.mkdir(parents=True, exist_ok=True)
    save_file(build(ModelSpec(cfg, None, seed=0)).state_dict(), folder / "model.safetensors")
    (folder / "config.yaml").write_text(dump_config(cfg))
    return folder


def plain_embed(checkpoint: Path, data: str, block: int) -> tuple[float, int]:
    """The anchor: (seconds, wells) of one process reading, tiling, embedding at ``block``
    and averaging to wells."""
    from scaling.evaluate.embed import load_spec

    t0 = time.perf_counter()
    spec = load_spec(checkpoint)
    model, scr = build(spec), screen(data, spec.crop)
    row = {k: i for i, k in enumerate(scr.wells["key"])}
    sums = np.zeros((len(row), model.size.width), np.float64)
    with torch.inference_mode():
        for task in tile_tasks(scr):
            t = read_tiles(task, spec.crop)
            idx = np.fromiter((row[k] for k in t["key"]), np.int64, len(t["key"]))
            for i in range(0, len(idx), BATCH):
                x = torch.from_numpy(t["tiles"][i : i + BATCH])
                np.add.at(sums, idx[i : i + BATCH], model.embed_blocks(x, block)[:, -1].numpy())
    means = (sums / scr.wells["tiles"].to_numpy()[:, None]).astype(np.float32)
    assert np.isfinite(means).all()
    return time.perf_counter() - t0, len(row)


def warmup_curation(data: str, tmp: Path) -> str:
    """A curation manifest (the layout ``scaling curate`` writes) of the first shard's wells."""
    import pyarrow.parquet as pq

    from scaling.shards.dataset import open_dataset
    from scaling.shards.format import KEY_COLUMNS

    first = open_dataset(data).files[0]
    wells = pq.read_table(first, columns=KEY_COLUMNS).to_pandas().drop_duplicates()
    out = tmp / "warmup"
    out.mkdir()
    wells.to_parquet(out / "wells.parquet", index=False)
    (out / "curation.json").write_text(
        json.dumps({"strategy": "warm-up", "source": str(Path(data).resolve())})
    )
    return str(out)


def timed_embed(checkpoint: Path, data: str, out: Path, block: int) -> tuple[float, int]:
    """(seconds, wells) of ``scaling embed`` at ``block``."""
    t0 = time.perf_counter()
    s = embed_screen(checkpoint, data, out, block=block, overwrite=True, progress=False)
    return time.perf_counter() - t0, s["wells"]


def bench_embed(path: str | None = None, size: str = SIZE):
    from scaling.parallel import init_ray

    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        tmp = Path(tmp)
        if path is None:
            from scaling.world.synth import synthesize

            path = str(tmp / "small")
            synthesize(path, preset="small", progress=False)
        init_ray()
        ckpt = random_checkpoint(tmp / "ckpt", size)
        depth = ModelSpec(Config(model=ModelConfig(name=size))).depth
        block = max(1, depth // 2)
        warm, _ = timed_embed(ckpt, warmup_curation(path, tmp), tmp / "warm.parquet", 1)
        times = {}
        for b in (block, depth):
            ours, wells = timed_embed(ckpt, path, tmp / f"b{b}.parquet", b)
            anchor, _ = plain_embed(ckpt, path, b)
            times[b] = ours
            about = dict(
                warmup_s=round(warm, 2),
                model=size,
                crop=CROP,
                wells=wells,
                block=b,
                depth=depth,
                threads=torch.get_num_threads(),
            )
            yield line(
                "embed",
                f"wells-block-{b}-of-{depth}",
                ours / wells,
                ANCHOR,
                anchor / wells,
                "s/well",
                **about,
            )
        yield line(
            "embed", f"truncation-block-{block}-of-{depth}", times[block],
            f"scaling embed with the full encoder ({depth} blocks)", times[depth], "s",
            model=size, wells=wells,
        )  # fmt: skip
