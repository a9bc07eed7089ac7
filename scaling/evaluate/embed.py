"""Every block's embedding of every well, in one forward pass per crop (ARCHITECTURE
section 4): each site is tiled into non-overlapping crops (edge remainders dropped), each
crop goes once through the encoder without masking (``MAE.embed_blocks``: for every block
b, the mean of the patch tokens after the final LayerNorm applied to block b's output), and
a well's embedding is the mean over all crops of its sites.

Inference runs on Ray Data: one read task per shard cuts the tiles, a pool of actors (each
holding the model once) embeds batches with ``map_batches``, and the driver sums crops into
wells as batches arrive, so on a cluster the actors spread over the nodes (``num_gpus``
per actor when GPUs are there).

A model is given by a checkpoint folder (``model.safetensors`` + ``config.yaml``, written
by every training checkpoint) or a run folder (its ``result.json`` names the checkpoint).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import ray
import torch

from scaling.capacity import Capacity, detect
from scaling.config import Config, load_config
from scaling.errors import InputError
from scaling.model.mae import MAE
from scaling.model.precision import autocast
from scaling.model.sizes import SIZES
from scaling.progress import bar
from scaling.shards.dataset import Dataset, open_dataset, read_selected, well_keys, well_table
from scaling.shards.format import KEY_COLUMNS
from scaling.stream.crops import decode_sites, grid_tiles


@dataclass
class ModelSpec:
    """What an embedding actor builds: the MAE of ``cfg``, with the weights at ``weights``
    (safetensors) or, when ``weights`` is None, randomly initialised from ``seed``; it
    embeds in ``cfg.train.precision``."""

    cfg: Config
    weights: str | None = None
    seed: int = 0

    @property
    def depth(self) -> int:
        return SIZES[self.cfg.model.name].depth

    @property
    def crop(self) -> int:
        return self.cfg.data.crop


def find_checkpoint(path) -> Path:
    """A checkpoint folder, from itself or from a run folder's ``result.json``."""
    p = Path(path)
    if (p / "result.json").is_file():
        ckpt = json.loads((p / "result.json").read_text()).get("checkpoint")
        if not ckpt:
            raise InputError(f"{p / 'result.json'}: names no checkpoint")
        p = Path(ckpt)
    for name in ("model.safetensors", "config.yaml"):
        if not (p / name).is_file():
            raise InputError(f"{p}: not a checkpoint (no {name})")
    return p


def load_spec(checkpoint) -> ModelSpec:
    p = find_checkpoint(checkpoint)
    return ModelSpec(load_config(p / "config.yaml"), str(p / "model.safetensors"))


def build(spec: ModelSpec) -> MAE:
    torch.manual_seed(spec.seed)
    model = MAE.from_config(spec.cfg)
    if spec.weights is not None:
        from safetensors.torch import load_file

        state = load_file(spec.weights)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise InputError(
                f"{spec.weights}: does not match {spec.cfg.model.name} "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
    return model.eval()


class Embedder:
    """A Ray Data actor: tiles (B, C, crop, crop) uint8 -> every block's embedding."""

    def __init__(self, spec: ModelSpec, threads: int = 0):
        if threads:
            torch.set_num_threads(threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = build(spec).to(self.device)
        self.precision = spec.cfg.train.precision  # the run's own (scaling.model.precision)

    def __call__(self, batch: dict) -> dict:
        x = torch.from_numpy(np.ascontiguousarray(batch["tiles"])).to(self.device)
        with torch.inference_mode(), autocast(self.precision, self.device):
            emb = self.model.embed_blocks(x)  # (B, depth, D) float32
        return {"key": batch["key"], "emb": emb.float().cpu().numpy()}


def shard_tiles(item: dict, crop: int, keys: list[str] | None) -> dict:
    """One shard -> its sites' grid tiles with their well keys (a Ray Data map step)."""
    table = read_selected(str(item["file"][0]), keys)
    if table.num_rows == 0:
        return {"key": np.array([], dtype=object), "tiles": np.zeros((0, 1, crop, crop), np.uint8)}
    tiles = [grid_tiles(s, crop) for s in decode_sites(table)]
    key = well_keys(table).to_numpy(zero_copy_only=False)
    return {"key": np.repeat(key, [len(t) for t in tiles]), "tiles": np.concatenate(tiles)}


def embed_wells(
    data,
    spec: ModelSpec,
    batch_size: int = 256,
    actors: int = 1,
    cpus_per_actor: float = 1.0,
    progress: bool = True,
) -> tuple[pd.DataFrame, np.ndarray]:
    """All wells of ``data`` -> (wells, E) with E (n_blocks, n_wells, D) float32: E[b] is the
    embedding of every well at block b+1."""
    from scaling.parallel import init_ray

    ds = data if isinstance(data, Dataset) else open_dataset(data)
    wells = well_table(ds).sort_values(KEY_COLUMNS).reset_index(drop=True)
    if not len(wells):
        raise InputError(f"{ds.root}: no wells to embed")
    keys = well_keys(pa.Table.from_pandas(wells[KEY_COLUMNS])).to_pylist()
    selected = None if ds.wells is None else keys  # a curation: read only its wells
    init_ray()
    gpus = 1 if detect().gpus >= 1 else 0  # the shape's: GPU nodes may not be up yet
    tiles = ray.data.from_items(
        [{"file": str(f)} for f in ds.files], override_num_blocks=len(ds.files)
    ).map_batches(shard_tiles, batch_size=1, fn_kwargs={"crop": spec.crop, "keys": selected})
    emb = tiles.map_batches(
        Embedder,
        fn_constructor_kwargs={"spec": spec, "threads": max(1, int(cpus_per_actor))},
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus,
    )
    row = {k: i for i, k in enumerate(keys)}
    width = SIZES[spec.cfg.model.name].width
    sums = np.zeros((len(wells), spec.depth, width), np.float64)  # (wells, blocks, D)
    counts = np.zeros(len(wells), np.int64)
    with bar(total=len(wells), desc="embed", unit="well", enabled=progress) as b:
        for batch in emb.iter_batches(batch_size=None, batch_format="numpy"):
            idx = np.fromiter((row[k] for k in batch["key"]), np.int64, len(batch["key"]))
            before = int((counts > 0).sum())
            np.add.at(counts, idx, 1)
            np.add.at(sums, idx, batch["emb"])
            b.update(int((counts > 0).sum()) - before)
    if (counts == 0).any():
        missing = keys[int(np.argmax(counts == 0))]
        raise InputError(f"{ds.root}: well {missing} has no tile of {spec.crop} px")
    return wells, (sums / counts[:, None, None]).transpose(1, 0, 2).astype(np.float32)


def default_actors(cap: Capacity | None = None) -> int:
    """One actor per GPU of the cluster's shape (``scaling.capacity``), else one per two of
    its CPUs (at least 1): GPU actors pending on a cluster scaled to 0 are the autoscaler's
    cue to start GPU nodes."""
    cap = cap or detect()
    return max(1, int(cap.gpus) or int(cap.cpus) // 2 or 1)
