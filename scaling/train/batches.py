"""Where a training process's micro-batches come from: a function of the crop position.

``memory``: the training sites, read once into this process's device memory, cut into the
crops at that position (``scaling.stream.memory``). ``stream``: the next batch of this
worker's split of the Ray Data stream from the task the position is in: the stream's
``StreamPosition`` moves there, so the tasks before it are neither read nor cropped (a
worker group restarted inside a fit), and this worker drops its share of the crops its
checkpoint had consumed of that task.
"""

from __future__ import annotations

from collections.abc import Callable

import ray
import torch

from scaling.config import Config


def batch_source(cfg: Config, config: dict, crops_seen: int, device, world: int) -> Callable:
    """The micro-batch function of a run that has trained ``crops_seen`` crops so far."""
    if config["source"] == "memory":
        return memory_batches(cfg, config["data"], device)
    plan = config["stream_plan"]
    task = plan.tasks_within(crops_seen)
    ray.get(config["stream_position"].set.remote(task))  # before this worker's first read
    batches = stream_batches(cfg, device, (crops_seen - plan.crops_before(task)) // world)
    return lambda position: next(batches)


def memory_batches(cfg: Config, data: str, device) -> Callable[[int], torch.Tensor]:
    from scaling.stream.memory import SiteCrops, load_sites

    d = cfg.data
    crops = SiteCrops(load_sites(data, d).to(device), d.crop, d.crops_per_site, d.seed)
    return lambda position: crops.batch(position, d.batch_size)


def stream_batches(cfg: Config, device, skip: int):
    """This worker's batches of the Ray Data stream, endlessly, the first ``skip`` crops
    dropped."""
    import ray.train

    from scaling.stream.collate import CropBatch

    shard = ray.train.get_dataset_shard("train")
    while True:
        for batch in shard.iter_torch_batches(
            batch_size=cfg.data.batch_size, collate_fn=CropBatch(), device=device
        ):
            x = batch["crop"]
            if skip > 0:
                skip -= len(x)
                continue
            yield x
