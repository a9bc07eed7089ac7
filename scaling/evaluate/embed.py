"""Well embeddings at every block (``scaling evaluate``) or at one (``scaling embed``), in one
forward pass per crop (ARCHITECTURE section 4): each site is tiled into non-overlapping
crops (edge remainders dropped), each crop goes once through the encoder without masking,
stopped after the last block asked for (``MAE.embed_blocks``: for every block b, the mean of
the patch tokens after the final LayerNorm applied to block b's output), and a well's
embedding is the mean over all crops of its sites.

Inference runs on Ray Data: read tasks of about ``TASK_BYTES`` (``scaling.evaluate.tiles``,
torch-free) read only the row groups that hold wanted sites and cut their tiles;
``map_batches`` embeds batches and sums each batch's tiles per well: on GPUs, one actor a GPU
holds the model in bf16 for the job; on CPU, tasks (``embed_batch``) whose worker processes
build the model once and keep it for their next tasks, of this job and of the next ones (a
worker Ray reuses has torch imported already, while an actor is a new process each job);
the driver adds those sums and hands on each well as soon as all its tiles are in
(``WellMeans``), so what it holds is the wells in flight, not the screen.

A model is given by a checkpoint folder (``model.safetensors`` + ``config.yaml``, written
by every training checkpoint) or a run folder (its ``result.json`` names the checkpoint).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import ray
import torch

from scaling.capacity import Capacity, detect
from scaling.config import Config, load_config
from scaling.errors import InputError
from scaling.evaluate.tiles import Screen, TileReads, WellMeans, screen, tile_tasks
from scaling.model.mae import MAE
from scaling.model.precision import autocast
from scaling.model.sizes import SIZES
from scaling.parallel import reuse_freed_memory
from scaling.progress import bar
from scaling.shards.dataset import Dataset
from scaling.shards.format import CHANNELS
from scaling.stream.collate import view_tensor

# read tasks (Parquet reads and tile cuts, light next to the model) claim no CPU, so they
# never wait on the actors' CPUs, nor on those of jobs around them (a ladder's runs); as
# many run at once as there are actors, so a job starts few processes
READ_CPUS = 0


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
    """A Ray Data actor (or a task worker's kept model, ``embed_batch``): tiles (B, C, crop,
    crop) uint8 with their well keys -> per well of the batch, its tile count ``n`` and the
    sum ``sum`` (W, blocks, D) float64 of its tiles' embeddings at blocks 1..``depth`` (only
    block ``depth`` with ``last_only``)."""

    def __init__(self, spec: ModelSpec, depth: int, last_only: bool = False, threads: int = 0):
        reuse_freed_memory()  # an actor on a cluster that did not start it with our settings
        if threads:
            torch.set_num_threads(threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = build(spec).to(self.device)
        self.depth, self.last_only = depth, last_only
        # bf16 on GPUs; on CPU the run's own precision (scaling.model.precision)
        self.precision = "bf16" if self.device == "cuda" else spec.cfg.train.precision

    def __call__(self, batch: dict) -> dict:
        x = view_tensor(np.ascontiguousarray(batch["tiles"])).to(self.device)  # never written
        with torch.inference_mode(), autocast(self.precision, self.device):
            emb = self.model.embed_blocks(x, self.depth)  # (B, depth, D) float32
        emb = (emb[:, -1:] if self.last_only else emb).double().cpu().numpy()
        codes, keys = pd.factorize(batch["key"])
        sums = np.zeros((len(keys), *emb.shape[1:]), np.float64)
        np.add.at(sums, codes, emb)
        return {"key": np.asarray(keys, object), "n": np.bincount(codes), "sum": sums}


_KEPT: dict = {}  # the Embedder this worker process built last, by what it was built from


def embed_batch(batch: dict, spec: ModelSpec, depth: int, last_only: bool, threads: int) -> dict:
    """``Embedder`` as a Ray Data task: a worker builds the model once and keeps it (one at
    a time) for its later tasks, of this job and of the next ones of the same model."""
    st = Path(spec.weights).stat() if spec.weights else None  # new weights at the same path
    key = (repr(spec), st and (st.st_ino, st.st_size, st.st_mtime_ns), depth, last_only, threads)
    if key not in _KEPT:
        _KEPT.clear()
        _KEPT[key] = Embedder(spec, depth, last_only, threads)
    return _KEPT[key](batch)


def embed_stream(
    scr: Screen,
    spec: ModelSpec,
    depth: int | None = None,
    last_only: bool = False,
    keys=None,
    batch_size: int = 256,
    actors: int | None = None,
    cpus_per_actor: float | None = None,
    actor_pool: bool | None = None,
):
    """Yield (keys, means (k, blocks, D) float32) as wells of ``keys`` (default: all of the
    screen) complete: every block 1..``depth`` (default the model's depth), or block
    ``depth`` alone with ``last_only``. The encoder runs only up to block ``depth``.
    ``actors`` (GPU actors, or CPU tasks at once) and ``cpus_per_actor`` default to
    ``actor_shape``'s; ``actor_pool`` (default: on GPU clusters) embeds in an actor pool
    rather than in tasks."""
    from scaling.parallel import init_ray

    depth = depth or spec.depth
    tasks = tile_tasks(scr, keys)
    if not tasks:
        return
    init_ray()
    actors, threads, cpus_per_actor, gpus = actor_plan(detect(), actors, cpus_per_actor)
    # a block of tiles per read task: tasks run apart and stream into the embedding
    tiles = ray.data.read_datasource(
        TileReads(tasks, scr.crop),
        num_cpus=READ_CPUS,
        compute=ray.data.TaskPoolStrategy(size=actors),
        override_num_blocks=len(tasks),
    )
    how = {"spec": spec, "depth": depth, "last_only": last_only, "threads": threads}
    if bool(gpus) if actor_pool is None else actor_pool:  # an actor holds its model for the job
        emb = tiles.map_batches(
            Embedder, fn_constructor_kwargs=how, compute=ray.data.ActorPoolStrategy(size=actors),
            batch_size=batch_size, num_cpus=cpus_per_actor, num_gpus=gpus,
        )  # fmt: skip
    else:  # tasks: a worker keeps its model for the job's next tasks and the next job's
        emb = tiles.map_batches(
            embed_batch, fn_kwargs=how, compute=ray.data.TaskPoolStrategy(size=actors),
            batch_size=batch_size, num_cpus=cpus_per_actor,
        )  # fmt: skip
    means = WellMeans(dict(zip(scr.wells["key"], scr.wells["tiles"], strict=True)))
    for batch in emb.iter_batches(batch_size=None, batch_format="numpy"):
        done, x = means.add(batch)
        if done:
            yield done, x


def embed_wells(
    data,
    spec: ModelSpec,
    batch_size: int = 256,
    actors: int | None = None,
    cpus_per_actor: float | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, np.ndarray]:
    """All wells of ``data`` -> (wells, E) with E (n_blocks, n_wells, D) float32: E[b] is the
    embedding of every well at block b+1 (wells sorted by experiment, plate, well)."""
    scr = screen(data, spec.crop)
    check_channels(scr.ds, spec)
    row = {k: i for i, k in enumerate(scr.wells["key"])}
    E = np.zeros((spec.depth, len(row), SIZES[spec.cfg.model.name].width), np.float32)
    stream = embed_stream(
        scr, spec, batch_size=batch_size, actors=actors, cpus_per_actor=cpus_per_actor
    )
    with bar(total=len(row), desc="embed", unit="well", enabled=progress) as b:
        for keys, x in stream:
            E[:, [row[k] for k in keys]] = x.transpose(1, 0, 2)
            b.update(len(keys))
    return scr.wells.drop(columns=["key", "tiles"]), E


def check_channels(ds: Dataset, spec: ModelSpec) -> None:
    """An ``InputError`` unless the model was trained on the data's channels (a model that
    records none was trained on RxRx3's six) or is channel-agnostic (takes any channels)."""
    if spec.cfg.model.channel_agnostic:
        return
    names, want = list(ds.channel_names), list(spec.cfg.model.channels) or list(CHANNELS)
    if names != want:
        raise InputError(f"{ds.root}: channels {names}, but the model was trained on {want}")


def actor_shape(cap: Capacity | None = None) -> tuple[int, int]:
    """(actors, torch threads an actor) from the cluster's shape (``scaling.capacity``): one
    actor per GPU (GPU actors pending on a cluster scaled to 0 are the autoscaler's cue to
    start GPU nodes), else one per node of the smallest node type, running as many threads
    as it has CPUs (embedding is compute; read tasks claim no CPU)."""
    cap = cap or detect()
    if cap.gpus >= 1:
        return int(cap.gpus), 1
    per = int(min((n.cpus for n in cap.nodes if n.cpus > 0), default=1))
    return max(1, int(cap.cpus // max(per, 1))), max(per, 1)


def actor_plan(
    cap: Capacity, actors: int | None = None, cpus_per_actor: float | None = None
) -> tuple[int, int, float, int]:
    """(actors, torch threads an actor, CPUs an actor claims, GPUs an actor claims) of an
    embedding job on a cluster of shape ``cap``: ``actor_shape``'s unless ``actors`` (that
    many share the CPUs, or take a GPU each) or ``cpus_per_actor`` (that many CPUs and as
    many threads an actor) are given."""
    gpus = 1 if cap.gpus >= 1 else 0  # the shape's: GPU nodes may not be up yet
    if actors is None:
        actors, threads = actor_shape(cap)
    else:
        threads = 1 if gpus else max(1, math.floor(cap.cpus / actors))
    threads = math.ceil(cpus_per_actor) if cpus_per_actor else threads
    return actors, threads, cpus_per_actor or actor_cpus(threads), gpus


def actor_cpus(threads: int) -> float:
    """The CPUs an actor of ``threads`` threads claims: one less, so the driver and the
    small tasks around it (a ladder's run tasks hold 0.01 CPU each) never starve it."""
    return float(max(1, threads - 1))


def default_actors(cap: Capacity | None = None) -> int:
    """The number of embedding actors of ``actor_shape``."""
    return actor_shape(cap)[0]
