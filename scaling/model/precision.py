"""The one precision policy of every forward pass: training, validation, WSD branches,
in-training probes, ``scaling evaluate``, the embedding actors and the random-init baselines.

``fp32``: everything in float32. ``bf16``: weights, gradients and optimizer state stay in
float32 (they are the master weights, and what ``model.safetensors`` holds); matrix
multiplications, convolutions and attention run in bfloat16 under ``torch.autocast``; the
loss (the masked MSE and the Fourier term) is computed in float32 (``MAE.forward_loss``
leaves autocast). DeepSpeed is told the same through its ``torch_autocast`` section (its
``bf16`` section would cast the module's own weights to bfloat16, so that the weights the
model computes with are no longer the float32 ones we save); under ZeRO it then gathers and
reduces the autocast layers' parameters and gradients in bfloat16.
"""

from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def dtype(precision: str) -> torch.dtype:
    try:
        return DTYPES[precision]
    except KeyError:
        raise ValueError(f"precision: {precision!r} is not one of {', '.join(DTYPES)}") from None


def autocast(precision: str, device: str | torch.device = "cpu"):
    """The context every forward pass of a model runs in under ``precision``."""
    device_type = torch.device(device).type
    dt = dtype(precision)
    return torch.autocast(device_type, dtype=dt, enabled=dt != torch.float32)


def deepspeed_section(precision: str) -> dict:
    """The DeepSpeed configuration keys of ``precision`` (bf16 and fp16 sections off)."""
    on = dtype(precision) != torch.float32
    return {
        "bf16": {"enabled": False},
        "torch_autocast": {"enabled": on, "dtype": "bfloat16"} if on else {"enabled": False},
    }
