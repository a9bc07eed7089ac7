"""The MAE ViT: masking, patches, loss against a numpy reference, all-block embeddings,
sizes, and analytic FLOPs against FlopCounterMode."""

import numpy as np
import pytest
import torch

from scaling.model.flops import counted_train_flops, train_flops
from scaling.model.mae import MAE, self_standardize
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


def test_bench_model_anchor_has_our_shapes_and_trains():
    """The bench's anchor swaps in torch's encoder layers: same parameter count, and one
    step of each runs (time_pair raises if the parameter counts differ)."""
    from scaling.bench.model import anchor_mae, time_pair

    ours = MAE(SIZES["cpu-xs"], img_size=32)
    n = sum(p.numel() for p in ours.parameters())
    anchor = anchor_mae(MAE(SIZES["cpu-xs"], img_size=32))
    assert sum(p.numel() for p in anchor.parameters()) == n
    assert isinstance(anchor.blocks[0], torch.nn.TransformerEncoderLayer)
    loss, _, _ = anchor(torch.rand(2, 6, 32, 32))
    assert torch.isfinite(loss)
    t_ours, t_anchor, params = time_pair("cpu-xs", 32, 2, steps=1, warmup=0)
    assert params == n and t_ours > 0 and t_anchor > 0
