"""DeepSpeed for one training process: its configuration, its process group, its engine.

The precision comes from the one policy (``scaling.model.precision``): float32 master
weights and optimizer state, autocast bf16 matmuls and attention, the loss in float32.
"""

from __future__ import annotations

import math
import os

import torch

from scaling.config import Config
from scaling.errors import InputError
from scaling.model.mae import MAE
from scaling.model.precision import deepspeed_section
from scaling.train.optim import make_optimizer
from scaling.train.schedules import Schedule


def deepspeed_config(cfg: Config, world: int) -> dict:
    """DeepSpeed's configuration for ``world`` processes. With one process ZeRO has nothing
    to partition, and its bucketing and flat copies cost 5-10% of a small model's step
    (measured: cpu-m, 1 thread): one process runs stage 0, DeepSpeed's plain engine."""
    t = cfg.train
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": cfg.data.batch_size * t.grad_accum * world,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": {"stage": t.zero_stage if world > 1 else 0},
        "zero_allow_untested_optimizer": True,  # our AdamW / Lion are plain torch optimizers
        **deepspeed_section(t.precision),
        "steps_per_print": 10**9,
    }


def check_deepspeed_config(cfg: Config) -> None:
    """Let DeepSpeed parse our config (one process's view) before any worker starts."""
    from deepspeed.runtime.config import DeepSpeedConfig

    try:
        one = deepspeed_config(cfg, world=1)  # the stage as configured, for its checks
        DeepSpeedConfig({**one, "zero_optimization": {"stage": cfg.train.zero_stage}})
    except Exception as e:  # DeepSpeed raises assertions and pydantic errors alike
        raise InputError(f"train: DeepSpeed rejects the configuration ({str(e)[:200]})") from None


def local_process_group(threads: float) -> None:
    """Local mode: this process alone, ``threads`` torch threads, a gloo group of one."""
    torch.set_num_threads(max(1, math.ceil(threads)))
    if not torch.distributed.is_initialized():
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
            os.environ.setdefault(key, value)
        store = torch.distributed.HashStore()
        torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
        # Ray's local mode destroys the group when a run ends; DeepSpeed keeps its clone of
        # the world group, which a later run in this process (a bench, a test) must not reuse
        from deepspeed.utils import groups

        groups._WORLD_GROUP = None


def build_engine(cfg: Config, world: int, device: torch.device):
    """The run's model (seeded: the same initial weights on every rank), optimizer and
    schedule inside a DeepSpeed engine: (engine, schedule, lr_scheduler)."""
    import deepspeed

    torch.manual_seed(cfg.train.seed)
    model = MAE.from_config(cfg).to(device)
    optimizer = make_optimizer(model, cfg.train)
    schedule = Schedule(cfg.train)
    lr = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=lr,
        config=deepspeed_config(cfg, world),
        dist_init_required=False,
    )
    if world == 1:  # an all-reduce over one process is the identity: skip its flat copies
        engine.enable_backward_allreduce = False
    return engine, schedule, lr
