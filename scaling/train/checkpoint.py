"""Checkpoints of a run: DeepSpeed's own (every rank: weights, optimizer, schedule) plus, from
rank 0, ``state.json`` (the accounting), ``config.yaml`` and ``model.safetensors`` (the whole
model's float32 master weights, which ``scaling evaluate`` reads)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from contextlib import nullcontext
from pathlib import Path

import torch

TAG = "ds"


def full_weights(engine, zero_stage: int, rank: int) -> dict | None:
    """The whole model's float32 weights on rank 0 (ZeRO-3 partitions are gathered: every
    rank must call this), on the CPU, for safetensors. The module's parameters are the
    float32 master weights under every precision (``scaling.model.precision``)."""
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


def write_model(folder: Path, weights: dict, config_text: str, state: dict) -> None:
    """Rank 0's files of a checkpoint or a WSD branch."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(folder / "model.safetensors"))
    (folder / "config.yaml").write_text(config_text)
    (folder / "state.json").write_text(json.dumps(state))


def read_state(folder) -> dict:
    state = json.loads((Path(folder) / "state.json").read_text())
    state.setdefault("branches_done", [])
    return state


def latest(root: Path) -> Path | None:
    """The newest ``step_NNNNNN`` checkpoint under ``root`` (local mode), if any."""
    found = sorted(root.glob("step_*"))
    return found[-1] if found else None


def keep_newest(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` local-mode checkpoints."""
    for old in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def agree(flag: bool, device) -> bool:
    """Rank 0's ``flag``, the same on every rank (a broadcast; alone: the flag itself).
    Every rank must call it at the same point."""
    if not torch.distributed.is_initialized():
        return flag
    t = torch.tensor([int(flag)], device=device)
    torch.distributed.broadcast(t, 0)
    return bool(t.item())


ATTEMPTS = "attempts.jsonl"


def record_attempt(run_dir: Path, resumed_step: int) -> dict:
    """Count one start of a run's training function in ``run_dir/attempts.jsonl`` (rank 0)
    and return the run's restart accounting: ``restarts`` = starts - 1 (every worker-group
    restart, a local-mode rerun after a crash, a ladder's retry), and ``repeated_steps`` =
    steps the earlier attempts trained beyond where a later one resumed (at least: the
    furthest trunk step in ``metrics.jsonl`` when each attempt started). Each line also
    says when, on which host, Ray node (``node``, None outside Ray) and process rank 0
    started."""
    reached = 0
    log = run_dir / "metrics.jsonl"
    if log.is_file():
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        reached = max((r["step"] for r in rows if r.get("branch") is None), default=0)
    run_dir.mkdir(parents=True, exist_ok=True)
    start = {"resumed_step": resumed_step, "reached": reached, "at": time.time()}
    start.update(host=socket.gethostname(), node=node_id(), pid=os.getpid())  # where rank 0 ran
    with open(run_dir / ATTEMPTS, "a") as f:
        f.write(json.dumps(start) + "\n")
    starts = [json.loads(line) for line in (run_dir / ATTEMPTS).read_text().splitlines()]
    repeated = sum(max(0, a["reached"] - a["resumed_step"]) for a in starts[1:])
    return {"restarts": len(starts) - 1, "repeated_steps": repeated}


def node_id() -> str | None:
    """The Ray node this process runs on (hex), or None when Ray is not initialized."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
