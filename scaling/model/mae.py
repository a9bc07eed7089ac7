"""Masked autoencoder ViT for C-channel microscopy crops (after the MAE reference model).

Images are self-standardised per crop and channel, cut into p x p patches, 75% of the
patches are masked per sample (an exact count), the encoder sees the visible patches plus
a CLS token, and a light decoder predicts every patch. Loss (ARCHITECTURE section 1):
``(1 - w) * MSE(masked patches) + w * L1(|FFT(recon)|, |FFT(target)|)`` with w = 0.01, the
FFT taken on images rebuilt from patches. ``embed_blocks`` returns every block's pooled
embedding in one unmasked forward pass (ARCHITECTURE section 4).

Channel-agnostic variant (``channel_agnostic=True``, the CA-MAE of Kraus et al., CVPR 2024):
one patch projection shared by all channels, applied to each channel's p x p pixels alone,
so a crop of C channels gives C x N tokens (channel-major: token c * N + n is channel c's
patch n), each with its patch's 2-D sin-cos position. The encoder gets no channel
embedding: it sees a set of tokens, so it embeds crops of any channel count and order (a
permutation of the channels gives the same embedding). The decoder, which only training
uses, adds a fixed 1-D sin-cos embedding of the channel's index to every token so that a
mask token knows which channel to predict; it is computed for the crop's C, never stored.
Masking draws from all C x N tokens at the same ratio; each token predicts its own p*p
pixels (norm-pix: per token, i.e. per patch and channel); the Fourier term is the same
one, on the image reassembled from the tokens (any C). Compute: C times the tokens.

Speed, measured on CPU (README, "scaling bench model"): the Fourier term runs on ``rfft2``'s
half spectrum with its own backward (one inverse real FFT), means and variances take two
passes (``aten::std``/``var`` are several times slower), and bfloat16 attention on the CPU
runs as plain matmuls (:func:`attention`). Each computes what the plain formula does, to
float rounding (tests/test_model.py).

Shapes: B batch, C channels, H = W image side, p patch, N = (H / p)^2 patches,
D encoder width, T tokens (N; C x N channel-agnostic), P a token's pixels (p*p*C; p*p
channel-agnostic), K visible tokens.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from scaling.model.sizes import SIZES, ViTSize

if TYPE_CHECKING:
    from scaling.config import Config


def self_standardize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-crop, per-channel standardisation: (B, C, H, W) any dtype -> float32, mean 0, std 1.

    Lives in the model's forward, on the device: the stream moves raw uint8 crops (4x fewer
    bytes than float32), and training, evaluation and baselines share one definition.
    """
    x = x.to(torch.float32, copy=True)  # our own copy: centred in place, one buffer fewer
    centered = x.sub_(x.mean(dim=(-2, -1), keepdim=True))
    # two passes (aten::std is several times slower); vector_norm needs no squared copy
    norm = torch.linalg.vector_norm(centered, dim=(-2, -1), keepdim=True)
    std = norm / math.sqrt(x.shape[-2] * x.shape[-1])  # population std
    return centered / (std + eps)


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The norm-pix target: every patch (B, N, P) to mean 0 and unbiased variance 1,
    ``(x - mean) / sqrt(var + eps)``; two passes, which CPUs run faster than ``aten::var``."""
    centered = patches - patches.mean(-1, keepdim=True)
    norm = torch.linalg.vector_norm(centered, dim=-1, keepdim=True)
    var = norm.square() / (patches.shape[-1] - 1)
    return centered / (var + eps).sqrt()


def fourier_l1(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The Fourier term: ``mean |(|F recon| - |F target|)|`` over the full orthonormal 2-D
    spectrum F of images (B, C, H, W) -> scalar, with gradient to ``recon`` only (the target
    is data). Computed on ``rfft2``'s half spectrum (:class:`_HalfSpectrumL1`)."""
    with torch.no_grad():
        t = torch.fft.rfft2(target, norm="ortho").abs()
    return _HalfSpectrumL1.apply(recon, t)


def full_spectrum_mean(half: torch.Tensor, width: int) -> torch.Tensor:
    """Mean over the full spectrum of a conjugate-symmetric quantity given on the half
    spectrum (..., H, W // 2 + 1) of images of width W: every column counts twice except
    column 0 (and column W / 2 when W is even), over the full count (...) * H * W."""
    edges = half[..., 0].sum()
    if width % 2 == 0:
        edges = edges + half[..., -1].sum()
    return (2 * half.sum() - edges) / (half[..., 0].numel() * width)


class _HalfSpectrumL1(torch.autograd.Function):
    """``mean |(|F x| - t)|`` over the full spectrum of real images x, from the half spectrum.

    A real image's spectrum is conjugate symmetric (|X[k, l]| = |X[-k, -l]|), so the full mean
    is :func:`full_spectrum_mean` of the half. The gradient is one inverse real FFT,
    ``irfft2(sign(|X| - t) * X / |X|) / (B * C * H * W)`` (0 where |X| = 0, as ``sgn``
    gives), where autograd would run a full-size complex FFT and promote real gradients to
    complex.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) real images, t (B, C, H, W // 2 + 1) target magnitudes -> scalar."""
        spec = torch.fft.rfft2(x, norm="ortho")
        mag = spec.abs()
        diff = mag - t
        ctx.save_for_backward(spec, mag, diff)
        ctx.size, ctx.count = x.shape[-2:], x.numel()
        return full_spectrum_mean(diff.abs(), x.shape[-1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        spec, mag, diff = ctx.saved_tensors
        scale = torch.where(mag > 0, diff.sign() / mag, 0.0) * (grad / ctx.count)
        phasor = torch.view_as_complex(torch.view_as_real(spec) * scale[..., None])
        return torch.fft.irfft2(phasor, s=ctx.size, norm="ortho"), None


def sincos_2d(dim: int, grid: int, cls: bool = True, base: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding: (1, [1 +] grid * grid, dim), half the dims per
    axis, frequencies ``base ** (-i / (dim / 4))``; the CLS position (first, when ``cls``) is
    zero. The MAE reference's ``base`` is 10000; on a small grid most of those frequencies
    barely change across it (8 positions: 11 of 16 per axis at width 64 turn by under 0.6
    rad), so a smaller base gives every position a distinct code."""
    if dim % 4:
        raise ValueError(f"embedding width {dim} must be divisible by 4")
    omega = 1.0 / base ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
    ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    parts = []
    for pos in (ys.reshape(-1), xs.reshape(-1)):
        out = np.einsum("m,d->md", pos.astype(np.float64), omega)
        parts += [np.sin(out), np.cos(out)]
    emb = np.concatenate(parts, axis=1)
    if cls:
        emb = np.concatenate([np.zeros((1, dim)), emb])
    return torch.tensor(emb[None], dtype=torch.float32)  # on the default device (meta too)


def sincos_1d(dim: int, positions: int, device=None) -> torch.Tensor:
    """Fixed 1-D sin-cos embedding of positions 0..positions-1: (1, positions, dim), sines
    then cosines, frequencies as :func:`sincos_2d`'s (the channel-agnostic decoder's channel
    embedding)."""
    if dim % 2:
        raise ValueError(f"embedding width {dim} must be even")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, device=device) / (dim / 2.0))
    out = torch.arange(positions, device=device)[:, None] * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1)[None].float()


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) v: (B, heads, T, hd) x 3 -> (B, heads, T, hd).

    SDPA (flash kernels) everywhere but for bfloat16 on the CPU, where two matmuls and a
    softmax (which accumulates bfloat16 in float32) measured 1.2-2x faster per block, forward
    + backward, than SDPA's CPU flash kernel, whose bfloat16 backward is slow.
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        return scores.softmax(-1) @ v
    return F.scaled_dot_product_attention(q, k, v)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qk_norm: bool = False):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        hd = dim // heads
        self.q_norm = nn.LayerNorm(hd) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(hd) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, D), through :func:`attention`."""
        b, t, d = x.shape
        # unbind + transpose rather than one permute: the same views, a cheaper backward
        qkv = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (y.transpose(1, 2) for y in qkv)  # (B, heads, T, hd)
        x = attention(self.q_norm(q), self.k_norm(k), v)
        return self.proj(x.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block, optional LayerScale."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp: int,
        qk_norm: bool = False,
        layer_scale: float | None = None,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, qk_norm)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))
        init = layer_scale or 1.0
        self.ls1 = nn.Parameter(torch.full((dim,), init)) if layer_scale else None
        self.ls2 = nn.Parameter(torch.full((dim,), init)) if layer_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn(self.norm1(x))
        x = x + (a * self.ls1 if self.ls1 is not None else a)
        m = self.mlp(self.norm2(x))
        return x + (m * self.ls2 if self.ls2 is not None else m)


class MAE(nn.Module):
    def __init__(
        self,
        size: ViTSize,
        img_size: int = 64,
        channels: int = 6,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = False,
        qk_norm: bool = False,
        layer_scale: float | None = None,
        fourier_weight: float = 0.01,
        grad_checkpoint: bool = False,
        channel_agnostic: bool = False,
        pos_base: float = 10000.0,
        decoder_qk_identity: bool = False,
        decoder_pred_zero: bool = False,
    ):
        """``channels``: the input channels; with ``channel_agnostic`` only those of the
        training data, as no weight depends on them (module docstring). ``pos_base``: the
        sin-cos positions' base (:func:`sincos_2d`), encoder and decoder alike.
        ``decoder_qk_identity``: start the decoder's query and key projections at the
        identity, and with ``decoder_pred_zero`` the pixel prediction at zero
        (:meth:`_init_weights`)."""
        super().__init__()
        self.grad_checkpoint = grad_checkpoint  # recompute block activations in backward
        if img_size % size.patch:
            raise ValueError(f"image side {img_size} is not a multiple of patch {size.patch}")
        self.size, self.img_size, self.channels = size, img_size, channels
        self.channel_agnostic = channel_agnostic
        token_channels = 1 if channel_agnostic else channels  # the channels a token holds
        self.mask_ratio, self.norm_pix_loss, self.fourier_weight = (
            mask_ratio,
            norm_pix_loss,
            fourier_weight,
        )
        p, d, dd = size.patch, size.width, size.dec_width
        self.grid = img_size // p
        self.num_patches = self.grid**2
        self.patch_embed = nn.Conv2d(token_channels, d, kernel_size=p, stride=p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_buffer("pos_embed", sincos_2d(d, self.grid, base=pos_base), persistent=False)
        self.blocks = nn.ModuleList(
            Block(d, size.heads, size.mlp, qk_norm, layer_scale) for _ in range(size.depth)
        )
        self.norm = nn.LayerNorm(d)
        self.decoder_embed = nn.Linear(d, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.register_buffer(
            "decoder_pos_embed", sincos_2d(dd, self.grid, base=pos_base), persistent=False
        )
        self.decoder_blocks = nn.ModuleList(
            Block(dd, size.dec_heads, size.dec_mlp, qk_norm) for _ in range(size.dec_depth)
        )
        self.decoder_norm = nn.LayerNorm(dd)
        self.decoder_pred = nn.Linear(dd, p * p * token_channels)
        self._init_weights(decoder_qk_identity, decoder_pred_zero)

    @classmethod
    def from_config(cls, cfg: Config) -> MAE:
        """The MAE of a run's configuration: ``model.*`` options at ``data.crop`` pixels, with
        ``model.channels`` input channels (6, the RxRx3 set, when the config names none)."""
        m = cfg.model
        return cls(
            SIZES[m.name],
            img_size=cfg.data.crop,
            channels=len(m.channels) or 6,
            mask_ratio=m.mask_ratio,
            norm_pix_loss=m.norm_pix_loss,
            qk_norm=m.qk_norm,
            layer_scale=m.layer_scale,
            fourier_weight=m.fourier_weight,
            grad_checkpoint=m.grad_checkpoint,
            channel_agnostic=m.channel_agnostic,
            pos_base=m.pos_base,
            decoder_qk_identity=m.decoder_qk_identity,
            decoder_pred_zero=m.decoder_pred_zero,
        )

    def _init_weights(self, decoder_qk_identity: bool = False, pred_zero: bool = False) -> None:
        """The MAE reference's: Xavier-uniform linears and patch projection, zero biases.
        With ``decoder_qk_identity`` the decoder's query and key projections start at the
        identity (after mimetic initialisation, Trockman & Kolter 2023): a mask token, whose
        only content is its position, then attends from the first step to the tokens whose
        positions are like its own, its neighbours, where its pixels are predicted from.
        With ``pred_zero`` the decoder's last layer (``decoder_pred``) starts at zero, as
        classifier heads often do: the first prediction of every pixel is the norm-pix
        target's mean, 0, rather than a random projection of the decoder's features, whose
        noise the model first has to unlearn (README, "The demo's design")."""
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if pred_zero:
            nn.init.zeros_(self.decoder_pred.weight)
        if decoder_qk_identity:
            with torch.no_grad():
                for blk in self.decoder_blocks:
                    w = blk.attn.qkv.weight  # (3 dd, dd): queries, keys, values
                    w[: 2 * w.shape[1]].copy_(torch.eye(w.shape[1]).repeat(2, 1))

    # --- patches -------------------------------------------------------------------------
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> the tokens' pixels (B, T, P): (B, N, p*p*C), patches in row-major
        order, pixels (p, p, C); channel-agnostic (B, C*N, p*p), channel-major."""
        b, c, h, w = imgs.shape
        if self.channel_agnostic:
            return self._patches(imgs.reshape(b * c, 1, h, w)).reshape(b, c * self.num_patches, -1)
        return self._patches(imgs)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, P) -> (B, C, H, W), the inverse of :meth:`patchify` (C from T or P)."""
        b, t, _ = x.shape
        if self.channel_agnostic:
            c = t // self.num_patches
            imgs = self._unpatches(x.reshape(b * c, self.num_patches, -1))
            return imgs.reshape(b, c, *imgs.shape[-2:])
        return self._unpatches(x)

    def _patches(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, p*p*C), patches in row-major order, pixels (p, p, C)."""
        b, c, _, _ = imgs.shape
        p, g = self.size.patch, self.grid
        x = imgs.reshape(b, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, g * g, p * p * c)

    def _unpatches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, p*p*C) -> (B, C, H, W), the inverse of :meth:`_patches`."""
        b = x.shape[0]
        p, g = self.size.patch, self.grid
        c = x.shape[-1] // (p * p)
        x = x.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, g * p, g * p)

    def random_masking(self, x: torch.Tensor, ratio: float, generator=None):
        """Keep a random ``round(T * (1 - ratio))`` tokens per sample.

        x (B, T, D) -> visible (B, K, D), mask (B, T) with 1 = masked, ids_restore (B, T).
        """
        b, n, d = x.shape
        keep = int(round(n * (1 - ratio)))
        noise = torch.rand(b, n, device=x.device, generator=generator)
        ids_shuffle = noise.argsort(dim=1)
        ids_restore = ids_shuffle.argsort(dim=1)
        ids_keep = ids_shuffle[:, :keep]
        visible = x.gather(1, ids_keep[..., None].expand(-1, -1, d))
        mask = torch.ones(b, n, device=x.device)
        mask[:, :keep] = 0
        return visible, mask.gather(1, ids_restore), ids_restore

    # --- encoder / decoder -----------------------------------------------------------------
    def tokens(self, imgs: torch.Tensor) -> torch.Tensor:
        """Standardised images (B, C, H, W) -> patch tokens with positions (B, T, D):
        (B, N, D), or channel-agnostic (B, C*N, D), each channel's patches embedded alone by
        the shared projection, channel-major, with no channel embedding."""
        b, c, h, w = imgs.shape
        if self.channel_agnostic:
            imgs = imgs.reshape(b * c, 1, h, w)  # channels into the batch: (B*C, 1, H, W)
        x = self.embed_patches(imgs) + self.pos_embed[:, 1:]
        return x.reshape(b, -1, x.shape[-1])

    def embed_patches(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, D): the patch projection, ``patch_embed`` (a Conv2d of
        stride = kernel = patch) computed as one linear layer over (C, p, p)-ordered patches,
        with the convolution's own weight and bias. The same numbers; on the CPU 1.1-1.7x
        faster forward + backward than the convolution at our sizes (measured, 2 threads)."""
        b, c, _, _ = imgs.shape
        p, g = self.size.patch, self.grid
        patches = imgs.reshape(b, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, -1)
        w = self.patch_embed.weight
        return F.linear(patches, w.view(w.shape[0], -1), self.patch_embed.bias)

    def with_cls(self, x: torch.Tensor) -> torch.Tensor:
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1)

    def forward_encoder(self, imgs: torch.Tensor, ratio: float, generator=None):
        """(B, C, H, W) standardised -> latent (B, 1 + K, D), mask (B, T), ids_restore (B, T)."""
        x, mask, ids_restore = self.random_masking(self.tokens(imgs), ratio, generator)
        x = self.run_blocks(self.blocks, self.with_cls(x))
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (B, 1 + K, D), ids_restore (B, T) -> predicted tokens' pixels (B, T, P)."""
        x = self.decoder_embed(latent)
        b, k1, dd = x.shape
        n = ids_restore.shape[1]
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(b, n + 1 - k1, -1)], dim=1)
        tokens = tokens.gather(1, ids_restore[..., None].expand(-1, -1, dd))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_positions(n)
        x = self.run_blocks(self.decoder_blocks, x)
        return self.decoder_pred(self.decoder_norm(x[:, 1:]))

    def decoder_positions(self, tokens: int) -> torch.Tensor:
        """The decoder's embedding of CLS and ``tokens`` tokens: (1, 1 + T, dd), the 2-D
        sin-cos positions; channel-agnostic, each channel's copy of them plus
        :func:`sincos_1d` of its index."""
        if not self.channel_agnostic:
            return self.decoder_pos_embed
        cls, pos = self.decoder_pos_embed[:, :1], self.decoder_pos_embed[:, 1:]
        c = tokens // self.num_patches
        chan = sincos_1d(pos.shape[-1], c, pos.device)  # (1, C, dd)
        per_token = (pos[:, None] + chan[:, :, None]).reshape(1, tokens, -1)  # channel-major
        return torch.cat([cls, per_token], dim=1)

    def run_blocks(self, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) through ``blocks``, with activation checkpointing when training with it."""
        for blk in blocks:
            if self.grad_checkpoint and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x

    # --- loss --------------------------------------------------------------------------------
    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor):
        """Standardised images (B, C, H, W), pred (B, T, P), mask (B, T) ->
        (loss, {"mse": ..., "fourier": ...}), all float32 scalars, outside autocast (the
        precision policy, ``scaling.model.precision``). With ``fourier_weight`` 0 the Fourier
        term is switched off: loss = MSE, and there is no "fourier" entry.

        The MSE compares in patch space; only the reconstruction (and the norm-pix target) is
        rebuilt as an image for the Fourier term (:func:`fourier_l1`)."""
        device = pred.device.type
        if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
            with torch.autocast(device, enabled=False):
                return self._loss(imgs.float(), pred.float(), mask)
        return self._loss(imgs.float(), pred.float(), mask)

    def _loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor):
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            target = normalize_patches(target)
        mse = (F.mse_loss(pred, target, reduction="none").mean(-1) * mask).sum() / mask.sum()
        w = self.fourier_weight
        if not w:  # switched off: neither computed nor differentiated
            return mse, {"mse": mse.detach()}
        target_img = self.unpatchify(target) if self.norm_pix_loss else imgs
        fourier = fourier_l1(self.unpatchify(pred), target_img)
        return (1 - w) * mse + w * fourier, {"mse": mse.detach(), "fourier": fourier.detach()}

    def forward(self, imgs: torch.Tensor, generator=None):
        """Raw crops (B, C, H, W), any dtype -> (loss, pred (B, T, P), mask (B, T))."""
        x = self_standardize(imgs)
        latent, mask, ids_restore = self.forward_encoder(x, self.mask_ratio, generator)
        pred = self.forward_decoder(latent, ids_restore)
        loss, parts = self.forward_loss(x, pred, mask)
        self.last_parts = parts
        return loss, pred, mask

    @torch.no_grad()
    def embed_blocks(self, imgs: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """Raw crops (B, C, H, W) -> (B, depth, D): for every block b up to ``depth`` (default
        all), the mean of the patch tokens (CLS excluded; channel-agnostic: over all C x N
        tokens, any C) after the final LayerNorm applied to block b's output, all in one
        unmasked forward pass (ARCHITECTURE section 4) that stops after block ``depth``."""
        x = self.with_cls(self.tokens(self_standardize(imgs)))
        out = []
        for blk in self.blocks[: depth or len(self.blocks)]:
            x = blk(x)
            out.append(self.norm(x)[:, 1:].float().mean(dim=1))  # float32 under bf16 too
        return torch.stack(out, dim=1)

    def param_counts(self) -> dict[str, int]:
        enc = sum(
            p.numel()
            for n, p in self.named_parameters()
            if not n.startswith(("decoder", "mask_token"))
        )
        total = sum(p.numel() for p in self.parameters())
        return {"encoder": enc, "decoder": total - enc, "total": total}


def visible_patches(num_patches: int, ratio: float) -> int:
    return int(round(num_patches * (1 - ratio)))
