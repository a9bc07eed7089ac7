"""``scaling bench model``: one forward + backward + AdamW step of our MAE against Hugging Face
``transformers``' ``ViTMAEForPreTraining`` with the same shapes (ARCHITECTURE section 6).

The anchor gets the encoder's width, depth, heads and MLP size, the decoder's, the patch size,
6 channels, the crop side, the mask ratio and ``norm_pix_loss``, no dropout, SDPA attention
and the same optimizer over its trainable parameters: AdamW's fused kernel, which our engine
trains with (``scaling.train.optim``) and transformers' ``Trainer`` defaults to on torch 2.8
and later (``adamw_torch_fused``); torch's own default on the CPU is a loop over parameters.
Our options it lacks are switched off on our side: no qk-norm, no LayerScale,
``fourier_weight=0`` (so the loss is the same masked MSE). Our model takes raw uint8 crops
and self-standardises them inside its forward; the anchor gets a float tensor of the same
shape, so the standardisation is work counted against us. Both run under the same precision
policy (``scaling.model.precision.autocast``); steps alternate so that drift (and the other
processes on the machine) hits both alike.

Cases: ``cpu-m`` on 64 px crops and S/16 on 256 px crops, fp32 and bf16, on the CPU; with a
GPU visible, L/8 in bf16, reporting MFU: training FLOPs of the step (ARCHITECTURE section 4)
over its time, against ``peak_tflops``. A second line per CPU case keeps the earlier anchor,
the same MAE with PyTorch's ``nn.TransformerEncoderLayer`` as its blocks.

``transformers`` is a dev dependency, imported only here. (timm, the anchor the contract
named first, imports torchvision, and no torchvision wheel here loads beside CPU torch.)
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from scaling.bench import line
from scaling.model.flops import train_flops
from scaling.model.mae import MAE
from scaling.model.precision import autocast
from scaling.model.sizes import SIZES, ViTSize

# (size, crop side, batch, precision): a CPU ladder size and S/16 on 6 x 256 x 256 crops
CPU_CASES = [
    (n, i, b, p) for n, i, b in (("cpu-m", 64, 32), ("S/16", 256, 4)) for p in ("fp32", "bf16")
]
GPU_CASES = [("L/8", 256, 32, "bf16")]
HF = "transformers ViTMAEForPreTraining"
TORCH_LAYERS = "torch TransformerEncoderLayer MAE"
CHANNELS, MASK_RATIO, NORM_PIX = 6, 0.75, False


def ours_mae(size: ViTSize, img: int) -> MAE:
    """Our MAE with the options the anchors lack switched off (no Fourier term)."""
    return MAE(
        size, img, CHANNELS, mask_ratio=MASK_RATIO, norm_pix_loss=NORM_PIX, fourier_weight=0.0
    )


def hf_mae(size: ViTSize, img: int) -> nn.Module:
    """``transformers``' ``ViTMAEForPreTraining`` with the shapes of ``size`` at ``img`` px."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    config = ViTMAEConfig(
        hidden_size=size.width,
        num_hidden_layers=size.depth,
        num_attention_heads=size.heads,
        intermediate_size=size.mlp,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        image_size=img,
        patch_size=size.patch,
        num_channels=CHANNELS,
        qkv_bias=True,
        decoder_num_attention_heads=size.dec_heads,
        decoder_hidden_size=size.dec_width,
        decoder_num_hidden_layers=size.dec_depth,
        decoder_intermediate_size=size.dec_mlp,
        mask_ratio=MASK_RATIO,
        norm_pix_loss=NORM_PIX,
        attn_implementation="sdpa",
    )
    return ViTMAEForPreTraining(config)


def torch_layers_mae(size: ViTSize, img: int) -> MAE:
    """Our MAE with every block swapped for ``nn.TransformerEncoderLayer`` of the same width,
    heads and MLP size (pre-norm, GELU, no dropout); the rest of the MAE is shared code."""

    def layers(n, width, heads, mlp):
        return nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, heads, mlp, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(n)
        )

    model = ours_mae(size, img)
    model.blocks = layers(size.depth, size.width, size.heads, size.mlp)
    model.decoder_blocks = layers(size.dec_depth, size.dec_width, size.dec_heads, size.dec_mlp)
    return model


def trainable(model: nn.Module) -> int:
    """Parameters the optimizer updates (the anchor's fixed sin-cos positions are frozen
    parameters; ours are buffers)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _step_timer(model: nn.Module, x: torch.Tensor, precision: str):
    """A function that runs one training step on ``x`` and returns its wall time in seconds.
    Works for both model kinds: each returns its loss first."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)  # as both sides train (module doc)
    device = x.device.type

    def step() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast(precision, device):
            loss = model(x)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    return step


def time_models(
    models: dict, img: int, batch: int, device="cpu", precision="fp32", steps=5, warmup=2
):
    """Median seconds per step of each model in ``models`` (name -> module), steps interleaved
    in alternating order.

    Our MAE gets raw uint8 crops (B, 6, img, img); the others a float32 tensor of that shape.
    """
    g = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (batch, CHANNELS, img, img), generator=g, dtype=torch.uint8)
    pixels = torch.randn(batch, CHANNELS, img, img, generator=g)
    timers = {
        k: _step_timer(m.to(device), (raw if isinstance(m, MAE) else pixels).to(device), precision)
        for k, m in models.items()
    }
    times = {k: [] for k in timers}
    order = list(timers)
    for i in range(warmup + steps):
        for k in order if i % 2 == 0 else order[::-1]:  # ABBA: neither side always goes first
            dt = timers[k]()
            if i >= warmup:
                times[k].append(dt)
    return {k: statistics.median(v) for k, v in times.items()}


def time_case(name, img, batch, device="cpu", precision="fp32", steps=5, warmup=2, layers=True):
    """Seconds per step of ours, the ``transformers`` anchor and (``layers``) the torch-layers
    MAE, plus their trainable parameter counts; raises if a count differs from ours by >0.1%."""
    size = SIZES[name]
    torch.manual_seed(0)
    models = {"ours": ours_mae(size, img), HF: hf_mae(size, img)}
    if layers:
        models[TORCH_LAYERS] = torch_layers_mae(size, img)
    params = {k: trainable(m) for k, m in models.items()}
    for k, n in params.items():
        if abs(n / params["ours"] - 1) > 1e-3:
            raise AssertionError(f"{name}: {k} has {n} parameters, ours {params['ours']}")
    secs = time_models(models, img, batch, device, precision, steps, warmup)
    return secs, params


def bench_model(peak_tflops: float = 989.0, steps: int = 9, warmup: int = 2, cases=None):
    """Bench lines of every case (size, crop side, batch, precision, device): ours against the
    ``transformers`` anchor and, on the CPU, against the torch-layers MAE."""
    if cases is None:
        cases = [(*c, "cpu") for c in CPU_CASES]
        if torch.cuda.is_available():
            cases += [(*c, "cuda") for c in GPU_CASES]
    for name, img, batch, precision, device in cases:
        cpu = device == "cpu"
        secs, params = time_case(name, img, batch, device, precision, steps, warmup, layers=cpu)
        flops = train_flops(SIZES[name], img, batch=batch)
        for anchor in (HF, TORCH_LAYERS) if cpu else (HF,):
            ours, theirs = secs["ours"], secs[anchor]
            extra = dict(
                params=params["ours"],
                anchor_params=params[anchor],
                batch=batch,
                device=device,
                dtype=precision,
            )
            if cpu:
                extra["tflops_per_s"] = round(flops / ours / 1e12, 4)
            else:
                extra["mfu"] = round(flops / ours / (peak_tflops * 1e12), 4)
                extra["anchor_mfu"] = round(flops / theirs / (peak_tflops * 1e12), 4)
            case = f"{name} {img}px batch {batch} {precision}"
            yield line("model", case, ours, anchor, theirs, "s/step", **extra)
