"""``scaling bench model``: one forward + backward + optimizer step of our MAE against the
same MAE whose blocks are PyTorch's own ``nn.TransformerEncoderLayer`` (pre-norm, GELU, no
dropout): identical shapes, parameters and optimizer, only the block implementation differs.

The contract names timm's ViT blocks as the anchor. timm imports torchvision, and no
torchvision build on this package index loads beside the CPU build of torch 2.13 (its
wheels link libtorch_cuda), so the anchor uses torch's reference encoder layer instead,
which is what timm's ``Block`` reduces to: LayerNorm, fused-QKV attention through SDPA,
a GELU MLP, residuals.

On a GPU (when one is visible) it adds L/8 in bf16 and reports MFU: training FLOPs of the
step (ARCHITECTURE section 4) over its time, against ``--peak-tflops``.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from scaling.bench import line
from scaling.model.flops import train_flops
from scaling.model.mae import MAE
from scaling.model.sizes import SIZES

# (size, crop side, batch): a CPU ladder size and S/16 on 6 x 256 x 256 crops
CPU_CASES = [("cpu-m", 64, 32), ("S/16", 256, 4)]
GPU_CASES = [("L/8", 256, 32)]


def anchor_mae(model: MAE) -> MAE:
    """``model`` with every encoder and decoder block swapped for ``nn.TransformerEncoderLayer``
    of the same width, heads and MLP size (the rest of the MAE is shared code)."""
    s = model.size

    def layers(n, width, heads, mlp):
        return nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, heads, mlp, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(n)
        )

    model.blocks = layers(s.depth, s.width, s.heads, s.mlp)
    model.decoder_blocks = layers(s.dec_depth, s.dec_width, s.dec_heads, s.dec_mlp)
    return model


def _builders(name: str, img: int, device: str):
    size = SIZES[name]

    def ours():
        return MAE(size, img_size=img).to(device)

    def anchor():
        return anchor_mae(MAE(size, img_size=img)).to(device)

    return ours, anchor


def _step_timer(model: MAE, batch: int, img: int, device: str, dtype):
    """A function that runs one training step and returns its wall time in seconds."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.rand(batch, 6, img, img, generator=g).to(device)

    def step() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            loss, _, _ = model(x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    return step


def time_pair(name, img, batch, device="cpu", dtype=torch.float32, steps=5, warmup=2):
    """Median step time of ours and of the anchor; steps alternate so drift hits both."""
    torch.manual_seed(0)
    build_ours, build_anchor = _builders(name, img, device)
    models = {"ours": build_ours(), "anchor": build_anchor()}
    n_ours = sum(p.numel() for p in models["ours"].parameters())
    n_anchor = sum(p.numel() for p in models["anchor"].parameters())
    if n_ours != n_anchor:
        raise AssertionError(f"{name}: anchor has {n_anchor} parameters, ours {n_ours}")
    timers = {k: _step_timer(m, batch, img, device, dtype) for k, m in models.items()}
    times = {k: [] for k in timers}
    for i in range(warmup + steps):
        for k, t in timers.items():
            dt = t()
            if i >= warmup:
                times[k].append(dt)
    return statistics.median(times["ours"]), statistics.median(times["anchor"]), n_ours


def bench_model(peak_tflops: float = 989.0, steps: int = 5):
    cases = [(n, i, b, "cpu", torch.float32) for n, i, b in CPU_CASES]
    if torch.cuda.is_available():
        cases += [(n, i, b, "cuda", torch.bfloat16) for n, i, b in GPU_CASES]
    for name, img, batch, device, dtype in cases:
        ours, anchor, params = time_pair(name, img, batch, device, dtype, steps=steps)
        flops = train_flops(SIZES[name], img, batch=batch)
        extra = dict(params=params, batch=batch, device=device, dtype=str(dtype)[6:])
        if device == "cuda":
            extra["mfu"] = round(flops / ours / (peak_tflops * 1e12), 4)
            extra["anchor_mfu"] = round(flops / anchor / (peak_tflops * 1e12), 4)
        else:
            extra["tflops_per_s"] = round(flops / ours / 1e12, 4)
        yield line(
            "model",
            f"{name} {img}px batch {batch} {extra['dtype']}",
            ours,
            "torch TransformerEncoderLayer MAE",
            anchor,
            "s/step",
            **extra,
        )
