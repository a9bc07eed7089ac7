"""The training loop every Ray Train worker runs: DeepSpeed MAE pretraining.

Per optimizer step it reports (every ``train.log_every`` steps) loss, learning rate,
crops/s, tokens/s, cumulative crops and FLOPs (global, all workers), MFU on GPU, and the
validation reconstruction loss on the fixed held-out tiles (every ``train.val_every``), and
with ``train.eval_every`` the best block's linear-probe scores on a fixed set of wells.
Every ``train.checkpoint_every`` steps all ranks ``engine.save_checkpoint`` into a local
folder (rank 0 adds ``state.json``, ``config.yaml`` and ``model.safetensors``, which
``scaling evaluate`` reads) and report it; a restarted
worker group resumes from the latest one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from scaling.config import Config, _build, dump_config
from scaling.model.flops import train_flops
from scaling.model.mae import MAE
from scaling.model.sizes import SIZES
from scaling.stream.pipeline import CropBatch
from scaling.train.optim import branch_start, make_optimizer, one_cycle, wsd

TAG = "ds"


def deepspeed_config(cfg: Config, world: int) -> dict:
    t = cfg.train
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": cfg.data.batch_size * t.grad_accum * world,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": {"stage": t.zero_stage},
        "zero_allow_untested_optimizer": True,  # our AdamW / Lion are plain torch optimizers
        "bf16": {"enabled": t.precision == "bf16"},
        "steps_per_print": 10**9,
    }


def check_deepspeed_config(cfg: Config) -> None:
    """Let DeepSpeed parse our config (one process's view) before any worker starts."""
    from deepspeed.runtime.config import DeepSpeedConfig

    from scaling.errors import InputError

    try:
        DeepSpeedConfig(deepspeed_config(cfg, world=1))
    except Exception as e:  # DeepSpeed raises assertions and pydantic errors alike
        raise InputError(f"train: DeepSpeed rejects the configuration ({str(e)[:200]})") from None


@torch.no_grad()
def validation_loss(engine, tiles: torch.Tensor, batch: int, seed: int) -> float:
    """Mean reconstruction loss on the fixed tiles, with fixed masks (comparable over time)."""
    engine.eval()
    g = torch.Generator(device=tiles.device).manual_seed(seed)
    total = 0.0
    for i in range(0, len(tiles), batch):
        x = tiles[i : i + batch]
        loss, _, _ = engine(x, generator=g)
        total += loss.float().item() * len(x)
    engine.train()
    return total / len(tiles)


def full_weights(engine, zero_stage: int, rank: int) -> dict | None:
    """The whole model's weights on rank 0 (ZeRO-3 partitions are gathered; every rank must
    call this), fp32 on the CPU, for safetensors."""
    import deepspeed

    params = list(engine.module.parameters())
    gather = deepspeed.zero.GatheredParameters(params) if zero_stage == 3 else nullcontext()
    with gather:
        if rank != 0:
            return None
        return {
            k: v.detach().float().cpu().contiguous().clone()
            for k, v in engine.module.state_dict().items()
        }


def train_loop(config: dict) -> None:
    cfg = _build(Config, config["cfg"], "", "train_loop_config")
    t = cfg.train
    if not t.use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if t.workers == 0:  # local mode: one process, a process group of its own for DeepSpeed
        torch.set_num_threads(max(1, math.ceil(t.cpus_per_worker)))
        if not torch.distributed.is_initialized():
            for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
                os.environ.setdefault(key, value)
            store = torch.distributed.HashStore()
            torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    device = ray.train.torch.get_device()
    torch.manual_seed(t.seed)
    model = MAE.from_config(cfg)
    optimizer = make_optimizer(model, t)
    phase = {"end": t.steps}  # the step the learning rate decays to: the run's or a branch's
    if t.schedule == "wsd":
        first = min([*t.branches, t.steps])
        f = wsd(round(t.warmup * first), t.cooldown, t.min_lr_ratio)
        factor = lambda s: f(s, phase["end"])  # noqa: E731
    else:
        factor = one_cycle(t.steps, t.warmup, t.min_lr_ratio)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=schedule,
        config=deepspeed_config(cfg, world),
        dist_init_required=False,
    )

    state = {"step": 0, "crops_seen": 0, "flops": 0, "restarts": 0, "branches_done": []}
    # local mode keeps no Ray storage: checkpoints go to run.dir/checkpoints, kept here
    local_root = Path(config.get("run_dir") or cfg.run.dir) / "checkpoints"
    ckpt = ray.train.get_checkpoint()
    if ckpt is None and t.workers == 0 and sorted(local_root.glob("step_*")):
        ckpt = ray.train.Checkpoint(str(sorted(local_root.glob("step_*"))[-1]))
    restarted = ckpt is not None
    if ckpt is None and config.get("resume"):
        ckpt = ray.train.Checkpoint(config["resume"])
    if ckpt is not None:
        with ckpt.as_directory() as d:
            engine.load_checkpoint(d, tag=TAG)
            state = json.loads((Path(d) / "state.json").read_text())
        state["restarts"] += int(restarted)
        state.setdefault("branches_done", [])

    size, crop = SIZES[cfg.model.name], cfg.data.crop
    flops_per_crop = train_flops(size, crop, mask_ratio=cfg.model.mask_ratio)
    patches = (crop // size.patch) ** 2
    dtype = torch.bfloat16 if t.precision == "bf16" else torch.float32
    val = torch.from_numpy(config["val_tiles"]).to(device)
    shard = ray.train.get_dataset_shard("train")
    micro, window = 0, (time.perf_counter(), state["crops_seen"])
    # after a restart inside this fit the stream begins again where the fit began: skip
    # (without training) this worker's share of what the checkpoint had already consumed
    skip = (state["crops_seen"] - config.get("crops_at_start", 0)) // world

    tb = None  # TensorBoard: `tensorboard --logdir run.dir` (a ladder: all its runs)
    if rank == 0 and t.tensorboard:
        from tensorboardX import SummaryWriter

        tb = SummaryWriter(str(Path(config.get("run_dir") or cfg.run.dir) / "tensorboard"))

    def report(final: bool = False) -> None:
        nonlocal window
        s = state["step"]
        now = time.perf_counter()
        crops_per_s = (state["crops_seen"] - window[1]) / max(now - window[0], 1e-9)
        window = (now, state["crops_seen"])
        metrics = {
            **state,
            "loss": last_loss,
            "lr": schedule.get_last_lr()[0],
            "crops_per_s": crops_per_s,
            "tokens_per_s": crops_per_s * patches,
        }
        if t.use_gpu:
            metrics["mfu"] = crops_per_s * flops_per_crop / (t.peak_tflops * 1e12 * world)
        if final or s % t.val_every == 0:
            metrics["val_loss"] = validation_loss(engine, val, cfg.data.batch_size, t.seed)
        if config.get("probe_set") and (final or s % t.eval_every == 0):
            from scaling.evaluate.during import embed_set, probe_metrics

            emb = embed_set(engine.module, config["probe_set"], cfg.data.batch_size, device, dtype)
            if rank == 0:  # every rank embeds (ZeRO-3 gathers need all); rank 0 probes
                metrics.update(probe_metrics(emb, config["probe_set"]))
        if tb is not None:
            for key, value in metrics.items():
                if isinstance(value, int | float) and key not in ("step", "restarts"):
                    tb.add_scalar(f"{'branch' if branch else 'train'}/{key}", value, s)
            tb.flush()
        if final or (s % t.checkpoint_every == 0 and branch is None):
            local = t.workers == 0
            if local:
                local_root.mkdir(parents=True, exist_ok=True)
            d = tempfile.mkdtemp(prefix=".ckpt-", dir=local_root if local else None)
            engine.save_checkpoint(d, tag=TAG)
            weights = full_weights(engine, t.zero_stage, rank)
            if rank == 0:
                from safetensors.torch import save_file

                (Path(d) / "state.json").write_text(json.dumps(state))
                (Path(d) / "config.yaml").write_text(dump_config(cfg))
                save_file(weights, str(Path(d) / "model.safetensors"))
            if local:  # in place, then the oldest beyond train.keep_checkpoints go
                d = str(Path(d).rename(local_root / f"step_{s:06d}"))
                for old in sorted(local_root.glob("step_*"))[: -t.keep_checkpoints]:
                    shutil.rmtree(old, ignore_errors=True)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
            if not local:  # Ray Train has copied it to its storage
                shutil.rmtree(d, ignore_errors=True)
        else:
            ray.train.report(metrics)

    # WSD branches: at a branch's decay start the trunk is saved, the branch decays to its
    # end, its weights and accounting go to run.dir/branches/step_NNNNNN, and the trunk is
    # restored (model, optimizer, schedule, accounting) to go on at a constant rate
    branches = sorted(set(t.branches) - set(state["branches_done"]))
    branches = [b for b in branches if branch_start(b, t.cooldown) >= state["step"]]
    branch, trunk = None, None
    branch_root = Path(config.get("branch_dir") or Path(cfg.run.dir) / "branches")

    def start_branch(end: int) -> None:
        nonlocal branch, trunk
        engine.save_checkpoint(str(branch_root / ".trunk"), tag=TAG)
        branch, trunk, phase["end"] = end, dict(state), end

    def finish_branch() -> None:
        nonlocal branch, trunk
        out = branch_root / f"step_{branch:06d}"
        val_loss = validation_loss(engine, val, cfg.data.batch_size, t.seed)
        weights = full_weights(engine, t.zero_stage, rank)
        if rank == 0:
            from safetensors.torch import save_file

            out.mkdir(parents=True, exist_ok=True)
            own = _build(Config, config["cfg"], "", "train_loop_config")
            own.train.steps, own.train.branches = branch, []
            save_file(weights, str(out / "model.safetensors"))
            (out / "config.yaml").write_text(dump_config(own))
            info = {**state, "val_loss": val_loss, "loss": last_loss, "trunk_steps": t.steps}
            (out / "state.json").write_text(json.dumps(info))
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        engine.load_checkpoint(str(branch_root / ".trunk"), tag=TAG)
        state.clear()
        state.update(trunk, branches_done=[*trunk["branches_done"], branch])
        branch, trunk, phase["end"] = None, None, t.steps

    last_loss = float("nan")
    if branches and branch_start(branches[0], t.cooldown) == state["step"]:
        start_branch(branches.pop(0))
    while state["step"] < t.steps:
        for batch in shard.iter_torch_batches(
            batch_size=cfg.data.batch_size, collate_fn=CropBatch(), device=device
        ):
            x = batch["crop"]
            if skip > 0:
                skip -= len(x)
                continue
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss, _, _ = engine(x)
            engine.backward(loss)
            engine.step()
            micro += 1
            if micro % t.grad_accum:
                continue
            state["step"] += 1
            n = len(x) * t.grad_accum * world
            state["crops_seen"] += n
            state["flops"] += flops_per_crop * n
            last_loss = float(loss.detach().float().item())
            if branch is not None and state["step"] == branch:
                finish_branch()
                continue
            final = state["step"] >= t.steps
            cadence = (t.log_every, t.checkpoint_every, t.val_every, t.eval_every or t.steps)
            if final or any(state["step"] % k == 0 for k in cadence):
                report(final)
            if final:
                break
            if (
                branch is None
                and branches
                and state["step"] == branch_start(branches[0], t.cooldown)
            ):
                start_branch(branches.pop(0))
