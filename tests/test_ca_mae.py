"""The channel-agnostic MAE (``model.channel_agnostic``, CA-MAE): one model takes crops of 5
and 6 channels, tokens per patch and channel, its loss against a per-token reference, it
learns, its FLOPs match the counter, and a CA model trained on 6 channels embeds a
5-channel screen that a standard model refuses."""

from pathlib import Path

import numpy as np
import pytest
import torch

from scaling.config import load_config
from scaling.errors import InputError
from scaling.model.flops import counted_train_flops, train_flops
from scaling.model.mae import MAE, fourier_l1, self_standardize
from scaling.model.sizes import SIZES

ROOT = Path(__file__).parent.parent
SMOKE = ROOT / "jobs/configs/smoke.yaml"
SIZE = SIZES["cpu-xs"]  # patch 8: N = 64 patches of a 64 px crop


def ca_model(channels: int = 6, img_size: int = 64, **kw) -> MAE:
    torch.manual_seed(0)
    return MAE(SIZE, img_size=img_size, channels=channels, channel_agnostic=True, **kw)


def structured_crops(n: int, channels: int, side: int, seed: int = 0) -> torch.Tensor:
    """(n, C, side, side) uint8: a few cells at random places, drawn in every channel as a
    Gaussian blob of that channel's width (as nuclei, cytoplasm, membrane), plus a little
    noise; random crops whose channels share structure."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
    out = np.zeros((n, channels, side, side))
    for i in range(n):
        centres = rng.uniform(0, side, (4, 2))
        for c in range(channels):
            width = 2.0 + c
            img = sum(np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * width**2)) for y, x in centres)
            out[i, c] = img + 0.02 * rng.standard_normal((side, side))
    out = (out - out.min()) / (out.max() - out.min()) * 255
    return torch.from_numpy(out.astype(np.uint8))


def test_one_model_takes_five_and_six_channels():
    m = ca_model(6).eval()
    assert m.patch_embed.weight.shape[1] == 1 and m.decoder_pred.out_features == 8 * 8
    for c in (5, 6):
        x = torch.randint(0, 255, (3, c, 64, 64), dtype=torch.uint8)
        g = torch.Generator().manual_seed(0)
        loss, pred, mask = m(x, generator=g)
        assert torch.isfinite(loss) and set(m.last_parts) == {"mse", "fourier"}
        assert pred.shape == (3, c * 64, 64) and mask.shape == (3, c * 64)
        assert torch.all(mask.sum(1) == round(c * 64 * 0.75))  # over all C x N tokens
        assert m.tokens(self_standardize(x)).shape == (3, c * 64, SIZE.width)
        emb = m.embed_blocks(x)
        assert emb.shape == (3, SIZE.depth, SIZE.width) and emb.dtype == torch.float32
        assert m.embed_blocks(x, 1).shape == (3, 1, SIZE.width)
        # the pooled tokens are all C x N of them, after the final norm, block by block
        with torch.no_grad():
            h = m.with_cls(m.tokens(self_standardize(x)))
            for b, blk in enumerate(m.blocks):
                h = blk(h)
                assert torch.allclose(emb[:, b], m.norm(h)[:, 1:].mean(1), atol=1e-5)
        # no channel embedding in the encoder: the channels' order does not matter
        perm = torch.randperm(c, generator=g)
        assert torch.allclose(m.embed_blocks(x[:, perm]), emb, atol=1e-5)
        # tokens are channel-major, each one channel's p x p pixels
        xf = self_standardize(x)
        p = m.patchify(xf)
        assert p.shape == (3, c * 64, 64) and torch.equal(m.unpatchify(p), xf)
        assert torch.equal(p[1, 2 * 64 + 9].reshape(8, 8), xf[1, 2, 8:16, 8:16])  # c 2, patch 9
    # no weight depends on the channel count: a 5-channel build loads the 6-channel weights
    five = ca_model(5)
    five.load_state_dict(m.state_dict(), strict=True)
    x = torch.randint(0, 255, (2, 5, 64, 64), dtype=torch.uint8)
    assert torch.equal(five.eval().embed_blocks(x), m.embed_blocks(x))


def test_decoder_tells_the_channels_apart():
    """A mask token's decoder input carries its patch's position and its channel's index
    (sin-cos), the same for channel c whatever C is."""
    m = ca_model(6)
    six, five = m.decoder_positions(6 * 64), m.decoder_positions(5 * 64)
    assert six.shape == (1, 1 + 6 * 64, SIZE.dec_width)
    assert torch.equal(five, six[:, : 1 + 5 * 64])
    patch9 = six[0, 1 + 9 :: 64]  # patch 9 of every channel
    assert patch9.shape == (6, SIZE.dec_width)
    assert torch.cdist(patch9, patch9).add(torch.eye(6)).min() > 0.1


def test_loss_is_per_token_with_the_fourier_term_on_the_image():
    m = ca_model(6, norm_pix_loss=True)
    g = torch.Generator().manual_seed(1)
    imgs = self_standardize(torch.randint(0, 255, (2, 5, 64, 64), generator=g))
    pred = torch.randn(2, 5 * 64, 64, generator=g)
    mask = (torch.rand(2, 5 * 64, generator=g) < 0.75).float()
    loss, parts = m.forward_loss(imgs, pred, mask)

    x, pr, mk = imgs.double(), pred.double(), mask.double()
    target = torch.zeros(2, 5 * 64, 64, dtype=torch.float64)
    recon = torch.zeros(2, 5, 64, 64, dtype=torch.float64)
    for c in range(5):
        for i in range(8):
            for j in range(8):
                t = c * 64 + 8 * i + j
                patch = x[:, c, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8].reshape(2, 64)
                var = patch.var(-1, keepdim=True)  # norm-pix: per token (patch and channel)
                target[:, t] = (patch - patch.mean(-1, keepdim=True)) / (var + 1e-6).sqrt()
                recon[:, c, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8] = pr[:, t].reshape(2, 8, 8)
    mse = (((pr - target) ** 2).mean(-1) * mk).sum() / mk.sum()
    target_img = torch.zeros_like(recon)
    for c in range(5):
        for i in range(8):
            for j in range(8):
                target_img[:, c, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8] = target[
                    :, c * 64 + 8 * i + j
                ].reshape(2, 8, 8)
    fourier = fourier_l1(recon, target_img)
    assert parts["mse"].item() == pytest.approx(mse.item(), rel=1e-5)
    assert parts["fourier"].item() == pytest.approx(fourier.item(), rel=1e-5)
    assert loss.item() == pytest.approx(0.99 * mse.item() + 0.01 * fourier.item(), rel=1e-5)


@pytest.fixture
def one_thread():
    """Torch on one thread: this small a model steps fastest so, and two threads' barriers
    stall for seconds a step when other processes hold the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_steps_reduce_the_loss(one_thread):
    """30 steps bring the loss down (mostly the prediction's scale: to about the loss of
    predicting 0); by 150 the model predicts masked tokens from the visible ones, well below
    that."""
    m = ca_model(6, img_size=32)  # 6 x 16 tokens: a step takes milliseconds
    imgs = structured_crops(8, 6, side=32)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(150):
        g.manual_seed(0)  # the same mask each step: a fit that must go down
        loss, pred, mask = m(imgs, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[29] < 0.7 * losses[0], losses[:30:5]
    with torch.no_grad():
        zero, _ = m.forward_loss(self_standardize(imgs), torch.zeros_like(pred), mask)
    assert losses[-1] < 0.6 * zero.item(), (losses[::25], zero.item())


@pytest.mark.parametrize("name", ["cpu-xs", "cpu-m", "S/16", "L/8"])
def test_analytic_flops_match_the_counter(name):
    img = 64 if name.startswith("cpu") else 256
    for c in (5, 6):
        analytic = train_flops(SIZES[name], img, c, batch=2, channel_agnostic=True)
        counted = counted_train_flops(
            SIZES[name], img, c, batch=2, device="meta", channel_agnostic=True
        )
        assert abs(analytic / counted - 1) < 0.02
        # C x the tokens: more than the standard model, less than C x its compute
        standard = train_flops(SIZES[name], img, c, batch=2)
        assert standard < analytic < c * c * standard
    if name == "cpu-xs":  # a real run on the CPU too
        analytic = train_flops(SIZES[name], img, 5, batch=2, channel_agnostic=True)
        counted = counted_train_flops(SIZES[name], img, 5, batch=2, channel_agnostic=True)
        assert abs(analytic / counted - 1) < 0.02


def test_a_ca_model_trained_on_six_channels_embeds_a_five_channel_screen(
    tiny_world, jump_world, tmp_path
):
    from scaling.evaluate.embed import ModelSpec, embed_wells, load_spec
    from scaling.shards.dataset import open_dataset
    from scaling.train.pretrain import pretrain

    steps = 4
    cfg = load_config(
        SMOKE,
        [
            f"data.path={tiny_world}",
            f"run.dir={tmp_path / 'run'}",
            "model.channel_agnostic=true",
            "train.workers=0",
            f"train.steps={steps}",
            f"train.checkpoint_every={steps}",
            f"train.val_every={steps}",
            "train.log_every=2",
        ],
    )
    r = pretrain(cfg)
    assert r["step"] == steps and np.isfinite(r["loss"])
    assert r["flops"] == train_flops(
        SIZE, 64, 6, batch=steps * cfg.data.batch_size, channel_agnostic=True
    )
    spec = load_spec(tmp_path / "run")
    assert spec.cfg.model.channel_agnostic and len(spec.cfg.model.channels) == 6

    jump = jump_world  # the tiny-jump world (JUMP's five stains)
    assert len(open_dataset(jump).channel_names) == 5
    wells, E = embed_wells(jump, spec, batch_size=64, progress=False)
    assert E.shape == (SIZE.depth, len(wells), SIZE.width) and np.isfinite(E).all()
    assert len(wells) > 0 and E[-1].std(0).mean() > 0  # wells differ

    standard = ModelSpec(load_config(SMOKE), None)  # trained on RxRx3's six, not agnostic
    with pytest.raises(InputError, match=r"channels \[.*\], but the model was trained on"):
        embed_wells(jump, standard, progress=False)
