"""``scaling pretrain``: one DeepSpeed MAE run on Ray Train, from a validated config.

The driver checks the configuration and the data before asking Ray for workers, makes the
configured synthetic world under ``run.dir`` when ``data.path`` is unset, plans the crop
stream for enough epochs, and runs ``TorchTrainer`` with ``FailureConfig`` (a crashed
worker restarts the group, which resumes from the latest checkpoint) and
``CheckpointConfig`` (keep the last K). Ray's storage goes under ``run.dir``; at the end
``run.dir/result.json`` holds ``step, loss (final validation loss), flops, crops_seen,
restarts`` and the checkpoint path.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path

from scaling.config import Config, to_dict
from scaling.errors import InputError
from scaling.model.sizes import SIZES
from scaling.parallel import init_ray
from scaling.shards.dataset import open_dataset
from scaling.stream.pipeline import StreamPosition, planned_stream, validation_tiles
from scaling.stream.plan import site_index, stream_plan


def check_run(cfg: Config) -> None:
    """The checks made before any data is read: DeepSpeed's view and the crop geometry."""
    from scaling.train.engine import check_deepspeed_config

    check_deepspeed_config(cfg)
    size = SIZES[cfg.model.name]
    if cfg.data.crop % size.patch:
        raise InputError(
            f"data.crop: {cfg.data.crop} is not a multiple of {cfg.model.name}'s "
            f"patch ({size.patch})"
        )


def prepare_data(cfg: Config) -> str:
    """``data.path``, or the configured synthetic world under ``run.dir`` (made once)."""
    if cfg.data.path is not None:
        return cfg.data.path
    data = str(Path(cfg.run.dir).resolve() / "world")
    if not (Path(data) / "world.json").is_file():
        from scaling.world.synth import synthesize

        synthesize(data, preset=cfg.world.preset, seed=cfg.world.seed, overwrite=True)
    return data


def choose_source(cfg: Config, ds, index) -> str:
    """``data.source``, with ``auto`` resolved: memory when the training sites are uint8 of
    one size and fit in ``data.memory_gb`` (each training process holds a copy). Checked
    here, before any worker starts."""
    if cfg.data.source == "stream":
        return "stream"
    from scaling.stream.memory import training_sites

    n, nbytes = training_sites(ds, cfg.data, index)
    if n == 0:
        raise InputError(f"{ds.root}: no training sites after the hold-out and the selection")
    if cfg.data.source == "memory":
        if nbytes < 0:
            raise InputError(f"data.source: memory needs uint8 sites of one size ({ds.root})")
        return "memory"
    return "memory" if 0 <= nbytes <= cfg.data.memory_gb * 2**30 else "stream"


def on_this_node():
    """A scheduling strategy that keeps an actor on the driver's node, which lives as long
    as the run: a worker node lost mid-run must not take the run's stream state with it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


def stream_dataset(cfg: Config, ds, index, resume: str | None) -> tuple:
    """The Ray Data crop stream planned for enough epochs, from the checkpoint's position
    when resuming: (stream, its plan, its position, crops consumed at the start)."""
    plan = stream_plan(ds, cfg.data, index, epochs=1)
    per_epoch = sum(plan.task_crops())
    needed = cfg.train.steps * cfg.data.batch_size * cfg.train.grad_accum * cfg.train.processes
    plan = replace(plan, epochs=math.ceil(needed / per_epoch) + 1)  # the same parts
    done = json.loads((Path(resume) / "state.json").read_text())["crops_seen"] if resume else 0
    start = plan.tasks_within(done)
    position = StreamPosition.options(scheduling_strategy=on_this_node()).remote(start)
    stream = planned_stream(ds, cfg.data, index, plan, start, position)
    return stream, plan, position, done


def stream_follows_checkpoints(plan, position):
    """A Ray Train callback (it runs on the controller) that moves the stream's position to
    the task of each checkpoint Ray Train has registered. A worker group restarted inside a
    fit resumes from the latest one, and its stream can start reading as soon as the group
    starts, before its worker moves the position there (``batch_source``); the position
    then already points at it, not at the run's first task: without this, a restart
    after a node loss read tasks 0-3 again (1 of 5 drills, tests/test_multinode.py). The
    running group is past its last checkpoint, so moving the position skips nothing it
    still reads."""
    import ray
    from ray.train import UserCallback

    class StreamFollowsCheckpoints(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            crops = [m["crops_seen"] for m in metrics if "crops_seen" in m]
            if checkpoint is not None and crops:
                ray.get(position.set.remote(plan.tasks_within(crops[0])))

    return StreamFollowsCheckpoints()


def build_trainer(
    cfg: Config,
    data: str,
    run_config,
    resume: str | None = None,
):
    """The ``TorchTrainer`` of one run on ``data``: validation tiles, probe set and the
    training batches (sites in memory, or the Ray Data stream)."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    from scaling.capacity import detect, placement_strategy
    from scaling.train.loop import train_loop

    ds = open_dataset(data)
    cfg = with_channels(cfg, ds)
    index = site_index(ds, cfg.data)  # metadata only
    val = validation_tiles(ds, cfg.data, index)  # also checks crop against the site size
    probes = None
    if cfg.train.eval_every:
        from scaling.evaluate.during import probe_set

        probes = probe_set(ds, cfg.data.crop, cfg.train.eval_wells, cfg.data.seed, index)
    source = choose_source(cfg, ds, index)
    init_ray()
    datasets, stream = {}, {"crops_at_start": 0}
    if source == "stream":
        datasets["train"], plan, position, done = stream_dataset(cfg, ds, index, resume)
        stream = {"crops_at_start": done, "stream_plan": plan, "stream_position": position}
        run_config.callbacks = [*run_config.callbacks, stream_follows_checkpoints(plan, position)]

    return TorchTrainer(
        train_loop,
        train_loop_config={
            "cfg": to_dict(cfg),
            "data": str(data),
            "source": source,
            "val_tiles": val,
            "probe_set": probes,
            "resume": resume,
            **stream,
            "branch_dir": str(Path(cfg.run.dir).resolve() / "branches"),
            "run_dir": str(Path(cfg.run.dir).resolve()),
        },
        scaling_config=ScalingConfig(  # workers=0: local mode, in this process
            num_workers=cfg.train.workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker} if cfg.train.workers else None,
            # the workers in one placement group on one node where one node holds them
            placement_strategy=placement_strategy(cfg, detect()) if cfg.train.workers else "PACK",
        ),
        datasets=datasets,
        run_config=run_config,
    )


def with_channels(cfg: Config, ds) -> Config:
    """``cfg`` with ``model.channels`` set to the data's channel names (checkpoints record
    them); an ``InputError`` when the config names other channels than the data has."""
    names = list(ds.channel_names)
    if cfg.model.channels and cfg.model.channels != names:
        raise InputError(f"model.channels: {cfg.model.channels}, but {ds.root} has {names}")
    return replace(cfg, model=replace(cfg.model, channels=names))


def stream_rereads(trainer) -> list[int]:
    """The stream tasks the run read more than once (none for the memory source)."""
    import ray

    position = trainer.train_loop_config.get("stream_position")
    return [] if position is None else ray.get(position.reread.remote())


def pretrain(cfg: Config, resume: str | None = None) -> dict:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    called = time.time()
    check_run(cfg)
    run_dir = Path(cfg.run.dir).resolve()
    if resume is not None and not Path(resume).is_dir():
        raise InputError(f"--resume: no checkpoint folder {resume}")
    data = prepare_data(cfg)
    trainer = build_trainer(
        cfg,
        data,
        RunConfig(
            storage_path=str(run_dir),
            name="ray",
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
        ),
        resume=resume,
    )
    result = trainer.fit()
    m = result.metrics
    out = {
        "step": m["step"],
        "loss": m["val_loss"],
        "train_loss": m["loss"],
        "lr": m["lr"],
        "flops": m["flops"],
        "crops_seen": m["crops_seen"],
        "restarts": m["restarts"],
        "repeated_steps": m.get("repeated_steps", 0),
        "stream_rereads": stream_rereads(trainer),
        "source": trainer.train_loop_config["source"],
        "startup_s": round(m["first_step_at"] - called, 3),  # call to first optimizer step
        **{k: v for k, v in m.items() if k.startswith("probe_")},
        "model": cfg.model.name,
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "data": str(data),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / ".result.json.tmp"
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    os.replace(tmp, run_dir / "result.json")
    return out
