"""The function every Ray Train worker (or the local-mode process) runs: build the DeepSpeed
engine, resume from the latest checkpoint if there is one, and train on the configured
batches (``scaling.train.trainer.Trainer``)."""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

from scaling.config import Config, _build
from scaling.parallel import reuse_freed_memory
from scaling.train import checkpoint as ckpt


def extensions_dir() -> str:
    """Where DeepSpeed's JIT-built ops (the CPU shm collective; fused optimizers on GPUs) are
    cached: in this Python environment. torch's default, one ~/.cache/torch_extensions for
    every checkout on a machine, was rebuilt whenever a run came from another environment
    than the last build's: two runs compiling for 37 s on 2 cores before their first step
    (measured). ``make setup`` builds the shm op there."""
    return str(Path(sys.prefix) / "torch_extensions")


def jit_environment() -> None:
    """Build DeepSpeed's JIT ops in this environment's cache with this environment's ninja.
    The ``ninja`` package (a DeepSpeed requirement) installs ninja 1.13 into the
    environment's scripts folder, while PATH may lead to another (the machine's 1.11 here):
    the two hash a build command differently, so each rebuilt the shm op that the other had
    built, 35-55 s on 2 cores, whenever a process with the environment's folder first on
    PATH (a ``ray job submit`` job, an activated venv) came after one without it (measured)."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", extensions_dir())
    scripts = sysconfig.get_path("scripts")
    path = os.environ.get("PATH", "")
    if Path(scripts, "ninja").is_file() and path.split(os.pathsep)[0] != scripts:
        os.environ["PATH"] = os.pathsep.join([scripts, path]) if path else scripts


def build_cpu_ops() -> None:
    """Build DeepSpeed's CPU shm collective now (``make setup``), not in the first run."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    jit_environment()
    from deepspeed.comm.torch import build_shm_op

    build_shm_op()


def train_loop(config: dict) -> None:
    cfg = _build(Config, config["cfg"], "", "train_loop_config")
    t = cfg.train
    if not t.use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    jit_environment()
    reuse_freed_memory()  # a worker on a cluster that did not start it with our settings
    import ray.train

    from scaling.train.batches import batch_source
    from scaling.train.engine import build_engine, local_process_group
    from scaling.train.trainer import Trainer

    if t.workers == 0:
        local_process_group(t.cpus_per_worker)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    engine, schedule, lr = build_engine(cfg, world, device)
    trainer = Trainer(cfg, engine, schedule, lr, device, rank, world, config)

    # a restarted worker group resumes from Ray's latest checkpoint (local mode: ours, kept
    # under run.dir/checkpoints); else from --resume, if given
    found = ray.train.get_checkpoint()
    if found is None and t.workers == 0:
        local = ckpt.latest(Path(config.get("run_dir") or cfg.run.dir) / "checkpoints")
        found = ray.train.Checkpoint(str(local)) if local else None
    if found is None and config.get("resume"):
        found = ray.train.Checkpoint(config["resume"])
    if found is not None:
        with found.as_directory() as d:
            trainer.restore(d)
    trainer.start_attempt()  # every start counts: restarts and the steps they repeated
    trainer.fit(batch_source(cfg, config, trainer.state["crops_seen"], device, world))
