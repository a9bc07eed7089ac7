"""The MAE ViT: masking, patches, loss against a numpy reference, all-block embeddings,
sizes, and analytic FLOPs against FlopCounterMode."""

import numpy as np
import pytest
import torch

from scaling.model.flops import counted_train_flops, train_flops
from scaling.model.mae import (
    MAE,
    attention,
    fourier_l1,
    normalize_patches,
    self_standardize,
    sincos_2d,
)
from scaling.model.sizes import SIZES

CPU_SIZES = [n for n in SIZES if n.startswith("cpu")]


@pytest.fixture
def model():
    torch.manual_seed(0)
    return MAE(SIZES["cpu-s"], img_size=64).eval()


def test_masking_exact_count_uniform_and_consistent(model):
    x = torch.randn(4000, 64, 3)
    g = torch.Generator().manual_seed(0)
    visible, mask, ids_restore = model.random_masking(x, 0.75, generator=g)
    assert visible.shape == (4000, 16, 3)
    assert torch.all(mask.sum(1) == 48)  # an exact count per sample
    freq = mask.mean(0)  # every position masked about 75% of the time
    assert torch.all((freq - 0.75).abs() < 0.04)
    assert not torch.equal(mask[0], mask[1])
    # the visible tokens are exactly the unmasked ones, and ids_restore undoes the shuffle
    for i in range(5):
        kept = x[i][mask[i] == 0]
        assert torch.equal(torch.sort(kept[:, 0]).values, torch.sort(visible[i][:, 0]).values)
    order = ids_restore.argsort(1)
    assert torch.equal(order.argsort(1), ids_restore)


def test_patches_round_trip_and_match_the_conv_embedding(model):
    x = torch.randn(2, 6, 64, 64)
    p = model.patchify(x)
    assert p.shape == (2, 64, 8 * 8 * 6)
    assert torch.equal(model.unpatchify(p), x)
    # the conv patch embedding is a linear map of patchify's patches, in the same order
    w = model.patch_embed.weight  # (D, C, p, p)
    lin = p @ w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).T + model.patch_embed.bias
    conv = model.patch_embed(x).flatten(2).transpose(1, 2)
    assert torch.allclose(lin, conv, atol=1e-5)
    # the model's own patch projection (a linear layer over the conv's weights) is the conv
    assert torch.allclose(model.embed_patches(x), conv, atol=1e-5)
    (model.embed_patches(x) * conv.detach()).sum().backward()
    grad = model.patch_embed.weight.grad.clone()
    model.zero_grad()
    (conv * conv.detach()).sum().backward()
    assert torch.allclose(grad, model.patch_embed.weight.grad, rtol=1e-4, atol=1e-4)
    assert torch.equal(p[0, 9].reshape(8, 8, 6)[..., 2], x[0, 2, 8:16, 8:16])  # row 1, col 1


def test_loss_matches_numpy_reference(model):
    torch.manual_seed(1)
    imgs = self_standardize(torch.randint(0, 255, (3, 6, 64, 64)))
    pred = torch.randn(3, 64, 384)
    mask = (torch.rand(3, 64) < 0.75).float()
    loss, parts = model.forward_loss(imgs, pred, mask)

    x, pr, m = imgs.numpy().astype(np.float64), pred.numpy().astype(np.float64), mask.numpy()
    target = np.zeros((3, 64, 384))
    recon = np.zeros((3, 6, 64, 64))
    for b in range(3):
        for i in range(8):
            for j in range(8):
                patch = x[b, :, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8]  # (C, p, p)
                target[b, 8 * i + j] = patch.transpose(1, 2, 0).reshape(-1)
                recon[b, :, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8] = (
                    pr[b, 8 * i + j].reshape(8, 8, 6).transpose(2, 0, 1)
                )
    mse = (
        sum(((pr[b, n] - target[b, n]) ** 2).mean() for b in range(3) for n in range(64) if m[b, n])
        / m.sum()
    )
    spec = lambda a: np.abs(np.fft.fft2(a, norm="ortho"))  # noqa: E731
    fourier = np.abs(spec(recon) - spec(x)).mean()
    assert parts["mse"].item() == pytest.approx(mse, rel=1e-5)
    assert parts["fourier"].item() == pytest.approx(fourier, rel=1e-5)
    assert loss.item() == pytest.approx(0.99 * mse + 0.01 * fourier, rel=1e-5)


@pytest.mark.parametrize("shape", [(3, 2, 8, 8), (2, 3, 7, 9), (2, 1, 6, 5), (2, 6, 64, 64)])
def test_fourier_term_on_the_half_spectrum_equals_the_full_fft(shape):
    """fourier_l1 (rfft2, own backward) against the full-fft2 definition: values and gradients,
    even and odd sides, in float64 (exact to rounding) and float32."""

    def reference(recon, target):
        spec = lambda a: torch.fft.fft2(a, norm="ortho").abs()  # noqa: E731
        return (spec(recon) - spec(target)).abs().mean()

    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        g = torch.Generator().manual_seed(0)
        target = torch.randn(shape, generator=g, dtype=dtype)
        grads = []
        for fn in (fourier_l1, reference):
            recon = torch.randn(shape, generator=g.manual_seed(1), dtype=dtype).requires_grad_()
            value = fn(recon, target)
            value.backward()
            grads.append((value.detach(), recon.grad))
        (ours, g_ours), (ref, g_ref) = grads
        assert ours.item() == pytest.approx(ref.item(), rel=tol)
        assert torch.allclose(g_ours, g_ref, rtol=tol, atol=tol * g_ref.abs().max().item())
    # a flat reconstruction has zero spectrum bins: the gradient there is 0, as sgn's is
    recon = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    fourier_l1(recon, target.double()).backward()
    assert torch.isfinite(recon.grad).all()


def test_standardisation_and_norm_pix_equal_their_definitions():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 255, (4, 6, 32, 32), generator=g, dtype=torch.uint8)
    x[1, 3] = 200  # a constant channel stays finite
    xf = x.double()
    mean, std = (
        xf.mean(dim=(-2, -1), keepdim=True),
        xf.std(dim=(-2, -1), keepdim=True, unbiased=False),
    )
    z = self_standardize(x)
    assert torch.isfinite(z).all() and torch.equal(z[1, 3], torch.zeros(32, 32))
    assert torch.allclose(z.double(), (xf - mean) / (std + 1e-6), atol=1e-5)
    p = torch.randn(3, 16, 384, generator=g) * 5 + 3
    want = (p - p.mean(-1, keepdim=True)) / (p.var(-1, keepdim=True) + 1e-6).sqrt()
    assert torch.allclose(normalize_patches(p), want, atol=1e-5)


def test_bf16_cpu_attention_matches_sdpa():
    """The explicit bfloat16 path on the CPU computes SDPA's attention (to bf16 rounding)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, 2, 17, 16, generator=g) for _ in range(3))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    got = attention(*(t.bfloat16() for t in (q, k, v)))
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max() < 0.03


@pytest.mark.parametrize("base", [10000.0, 20.0])
def test_sincos_positions_follow_their_closed_form(base):
    dim, grid = 16, 4
    emb = sincos_2d(dim, grid, base=base)[0].double()
    assert emb.shape == (1 + grid * grid, dim) and not emb[0].any()  # CLS first, zero
    omega = base ** (-np.arange(dim // 4) / (dim / 4))
    for y in range(grid):
        for x in range(grid):
            want = np.concatenate(
                [np.sin(y * omega), np.cos(y * omega), np.sin(x * omega), np.cos(x * omega)]
            )
            np.testing.assert_allclose(emb[1 + y * grid + x].numpy(), want, atol=1e-6)


def test_a_small_base_spreads_the_positions_of_a_small_grid():
    """The reason for ``model.pos_base``: on the CPU ladder's 8 x 8 grid, base 20 codes
    the patches further apart than the reference 10000, and the model uses it."""

    def spread(base):  # median distance between two positions' codes
        e = sincos_2d(64, 8, cls=False, base=base)[0]
        return torch.cdist(e, e).median().item()

    assert spread(20.0) > 1.5 * spread(10000.0)
    m = MAE(SIZES["cpu-xs"], img_size=64, pos_base=20.0)
    assert torch.equal(m.pos_embed, sincos_2d(32, 8, base=20.0))
    assert torch.equal(m.decoder_pos_embed, sincos_2d(64, 8, base=20.0))


def neighbour_attention(model: MAE) -> float:
    """At the decoder's first block, mask tokens at every position of the 8 x 8 grid: the
    mean attention to a neighbouring patch over the mean attention to one 4+ patches away."""
    blk = model.decoder_blocks[0]
    a = blk.attn
    x = blk.norm1(model.mask_token + model.decoder_pos_embed)[0, 1:]  # (64, dd)
    q, k, _ = a.qkv(x).view(64, 3, a.heads, -1).unbind(1)
    att = torch.softmax(torch.einsum("thd,shd->hts", q, k) / q.shape[-1] ** 0.5, -1).mean(0)
    yx = torch.cartesian_prod(torch.arange(8), torch.arange(8))
    dist = (yx[:, None] - yx[None]).abs().sum(-1)
    return (att[dist == 1].mean() / att[dist >= 4].mean()).item()


def test_identity_decoder_queries_attend_to_their_neighbours_from_the_start():
    torch.manual_seed(0)
    m = MAE(SIZES["cpu-xs"], img_size=64, pos_base=20.0, decoder_qk_identity=True)
    dd = SIZES["cpu-xs"].dec_width
    for blk in m.decoder_blocks:  # queries and keys at the identity, values as before
        w = blk.attn.qkv.weight
        assert torch.equal(w[:dd], torch.eye(dd)) and torch.equal(w[dd : 2 * dd], torch.eye(dd))
        assert w[2 * dd :].std() > 0.05
    assert neighbour_attention(m) > 3.0
    torch.manual_seed(0)
    assert neighbour_attention(MAE(SIZES["cpu-xs"], img_size=64, pos_base=20.0)) < 1.5


def test_fourier_weight_zero_is_the_plain_masked_mse(model):
    torch.manual_seed(2)
    imgs = self_standardize(torch.randint(0, 255, (2, 6, 64, 64)))
    pred, mask = torch.randn(2, 64, 384), (torch.rand(2, 64) < 0.75).float()
    loss, parts = model.forward_loss(imgs, pred, mask)
    model.fourier_weight = 0.0
    loss0, parts0 = model.forward_loss(imgs, pred, mask)
    assert "fourier" not in parts0 and loss0.item() == pytest.approx(parts["mse"].item())


def test_all_block_embeddings_equal_per_block_forward(model):
    imgs = torch.randint(0, 255, (3, 6, 64, 64), dtype=torch.uint8)
    emb = model.embed_blocks(imgs)
    assert emb.shape == (3, SIZES["cpu-s"].depth, SIZES["cpu-s"].width)
    with torch.no_grad():
        for b in range(SIZES["cpu-s"].depth):
            x = model.with_cls(model.tokens(self_standardize(imgs)))
            for blk in model.blocks[: b + 1]:  # a fresh forward that stops at block b
                x = blk(x)
            assert torch.allclose(emb[:, b], model.norm(x)[:, 1:].mean(1), atol=1e-5)


def test_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    m = MAE(SIZES["cpu-xs"], img_size=64)
    imgs = torch.randint(0, 255, (8, 6, 64, 64), dtype=torch.uint8)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        g.manual_seed(0)  # the same mask each step: a fit that must go down
        loss, _, _ = m(imgs, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_sizes_match_the_paper_and_the_cpu_ladder_spans_30x():
    expected = {"S/16": 22e6, "B/8": 86e6, "L/8": 304e6, "H/8": 630e6, "G/8": 1.84e9}
    with torch.device("meta"):
        for name, n in expected.items():
            enc = MAE(SIZES[name], img_size=256).param_counts()["encoder"]
            assert abs(enc - n) / n < 0.03, (name, enc)
    enc = [MAE(SIZES[n]).param_counts()["encoder"] for n in CPU_SIZES]
    assert enc == sorted(enc) and enc[-1] / enc[0] >= 30


@pytest.mark.parametrize("name", list(SIZES))
def test_analytic_flops_match_the_counter(name):
    img = 64 if name in CPU_SIZES else 256
    analytic = train_flops(SIZES[name], img, batch=2)
    counted = counted_train_flops(SIZES[name], img, batch=2, device="meta")
    assert abs(analytic / counted - 1) < 0.02
    if name in CPU_SIZES + ["S/16"]:  # a real run on the CPU too
        counted = counted_train_flops(SIZES[name], img, batch=2, device="cpu")
        assert abs(analytic / counted - 1) < 0.02


def test_bench_model_anchors_have_our_shapes_and_train():
    """The bench's anchors: transformers' ViTMAEForPreTraining and the torch-layers MAE have
    our trainable parameter count, and the bench yields well-formed lines (a tiny case)."""
    from scaling.bench.model import HF, TORCH_LAYERS, bench_model, hf_mae, ours_mae, trainable

    size = SIZES["cpu-xs"]
    ours, hf = ours_mae(size, 32), hf_mae(size, 32)
    assert trainable(hf) == trainable(ours) == sum(p.numel() for p in ours.parameters())
    assert hf.config.hidden_size == size.width and hf.config.decoder_hidden_size == size.dec_width
    out = hf(torch.randn(2, 6, 32, 32))
    assert torch.isfinite(out.loss) and out.logits.shape == (2, 16, 8 * 8 * 6)

    lines = list(bench_model(steps=1, warmup=0, cases=[("cpu-2xs", 32, 2, "bf16", "cpu")]))
    assert [x["anchor"] for x in lines] == [HF, TORCH_LAYERS]
    keys = {"bench", "case", "ours", "anchor", "anchor_value", "ratio", "unit"}
    for x in lines:
        assert keys <= x.keys() and x["bench"] == "model" and x["unit"] == "s/step"
        assert x["ours"] > 0 and x["anchor_value"] > 0
        assert x["ratio"] == pytest.approx(x["ours"] / x["anchor_value"])
        assert x["params"] == x["anchor_params"] and x["dtype"] == "bf16"


def test_zero_decoder_prediction_starts_at_the_target_mean_and_learns():
    """``decoder_pred_zero``: the last layer starts at zero (every other weight as without
    it, from the same seed), so the first prediction is 0 everywhere; its gradient is not
    zero, so the first step moves it."""
    torch.manual_seed(0)
    ref = MAE(SIZES["cpu-xs"], img_size=64, norm_pix_loss=True)
    torch.manual_seed(0)
    m = MAE(SIZES["cpu-xs"], img_size=64, norm_pix_loss=True, decoder_pred_zero=True)
    for (name, a), (_, b) in zip(ref.state_dict().items(), m.state_dict().items(), strict=True):
        if name.startswith("decoder_pred"):
            assert not b.any(), name
        else:
            assert torch.equal(a, b), name
    imgs = torch.randint(0, 255, (2, 6, 64, 64), dtype=torch.uint8)
    loss, pred, mask = m(imgs, generator=torch.Generator().manual_seed(0))
    assert not pred.any()
    # norm-pix targets have unbiased variance 1: a zero prediction's squared error is (P-1)/P
    assert m.last_parts["mse"].item() == pytest.approx(383 / 384, rel=1e-5)
    loss.backward()
    assert m.decoder_pred.weight.grad.abs().sum() > 0
