"""Training compute (ARCHITECTURE section 4): training FLOPs = 3 x forward FLOPs, forward =
patch embedding + encoder on the visible tokens (+ CLS) + decoder on all tokens + the
prediction head, attention's quadratic terms included, a multiply-add counting 2.
Norms, activations, the loss and the optimizer are not counted (nor does the counter).

The channel-agnostic MAE (``channel_agnostic``) has C x N tokens of one channel each: the
patch embedding and the prediction head cost what they do for N tokens of C channels, the
encoder and the decoder run on C times the tokens (attention: C^2 times the pairs)."""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from scaling.model.mae import MAE, visible_patches
from scaling.model.sizes import ViTSize


def block_flops(tokens: int, width: int, mlp: int) -> int:
    """One transformer block's forward on ``tokens`` tokens, per sample."""
    t, d = tokens, width
    qkv, proj, fc = 2 * t * d * 3 * d, 2 * t * d * d, 2 * 2 * t * d * mlp
    attention = 2 * 2 * t * t * d  # scores Q K^T and the weighted sum A V
    return qkv + attention + proj + fc


def forward_flops(
    size: ViTSize,
    img_size: int,
    channels: int = 6,
    mask_ratio: float = 0.75,
    batch: int = 1,
    channel_agnostic: bool = False,
) -> int:
    """Analytic forward FLOPs of one MAE step on ``batch`` crops."""
    p, d, dd = size.patch, size.width, size.dec_width
    n = (img_size // p) ** 2
    t = n * channels if channel_agnostic else n  # tokens
    k = visible_patches(t, mask_ratio)
    patch_embed = 2 * n * channels * p * p * d  # either way: every pixel times D
    encoder = size.depth * block_flops(k + 1, d, size.mlp)
    decoder = 2 * (k + 1) * d * dd + size.dec_depth * block_flops(t + 1, dd, size.dec_mlp)
    head = 2 * n * dd * p * p * channels  # either way: D_dec times every pixel
    return batch * (patch_embed + encoder + decoder + head)


def train_flops(
    size: ViTSize,
    img_size: int,
    channels: int = 6,
    mask_ratio: float = 0.75,
    batch: int = 1,
    channel_agnostic: bool = False,
) -> int:
    """Training FLOPs of one step: forward and backward, 3 x forward."""
    return 3 * forward_flops(size, img_size, channels, mask_ratio, batch, channel_agnostic)


def counted_train_flops(
    size: ViTSize,
    img_size: int,
    channels: int = 6,
    mask_ratio: float = 0.75,
    batch: int = 2,
    device: str = "cpu",
    channel_agnostic: bool = False,
) -> int:
    """``FlopCounterMode``'s count of one forward + backward. On ``device="meta"`` no memory
    is used, so every size can be counted. The input requires grad so that the first layer's
    backward is counted in full, as the 3x convention assumes. Attention runs on the math
    SDPA backend here: torch 2.13's fused CPU kernel is invisible to the counter."""
    with torch.device(device):
        model = MAE(
            size,
            img_size=img_size,
            channels=channels,
            mask_ratio=mask_ratio,
            channel_agnostic=channel_agnostic,
        )
        x = torch.randn(batch, channels, img_size, img_size, requires_grad=True)
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        loss, _, _ = model(x)
        loss.backward()
    return counter.get_total_flops()
