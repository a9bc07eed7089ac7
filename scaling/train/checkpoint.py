"""Checkpoints of a run: DeepSpeed's own (every rank: weights, optimizer, schedule) plus, from
rank 0, ``state.json`` (the accounting), ``config.yaml`` and ``model.safetensors`` (the whole
model's float32 master weights, which ``scaling evaluate`` reads)."""

from __future__ import annotations

import json
import shutil
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


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
