import json
import os

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from scaling.errors import InputError
from scaling.evaluate.baselines import (
    FEATURE_NAMES,
    downsample,
    handcrafted_wells,
    pixel_pca_wells,
    segment_nuclei,
    site_features,
)
from scaling.shards.dataset import open_dataset
from scaling.world.biology import make_biology
from scaling.world.layout import PlateBatch
from scaling.world.presets import PRESETS
from scaling.world.render import _place_cells, render_site

KEYS = ["experiment", "plate", "well"]


def _ellipses(shape, centres, axes, angle=0.3):
    """A nuclei channel with filled ellipses of the given (semi-major, semi-minor) axes."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    img = np.full(shape, 8.0, np.float32)
    for (cy, cx), (a, b) in zip(centres, axes, strict=True):
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        img[(u / a) ** 2 + (v / b) ** 2 <= 1] = 180.0
    return img


def test_segmentation_counts_known_blobs_and_shapes():
    rng = np.random.default_rng(0)
    centres = [(20 + 28 * i, 20 + 28 * j) for i in range(4) for j in range(4)]
    img = _ellipses((128, 128), centres, [(9.0, 6.0)] * 16)
    img += rng.normal(0, 3, img.shape)
    fg, seeds = segment_nuclei(img)
    assert seeds.max() == 16
    # two touching discs are still two nuclei
    touching = _ellipses((64, 64), [(32, 25), (32, 38)], [(7.0, 7.0)] * 2)
    assert segment_nuclei(touching)[1].max() == 2
    site = np.stack([img] + [np.full_like(img, 50.0) + rng.normal(0, 5, img.shape)] * 5)
    f = dict(zip(FEATURE_NAMES, site_features(np.clip(site, 0, 255).astype(np.uint8)), strict=True))
    assert f["nuclei_per_10k_px"] == pytest.approx(16 * 1e4 / 128**2)
    assert f["nucleus_elongation"] == pytest.approx(1.5, rel=0.1)
    assert f["nucleus_area_median"] == pytest.approx(np.pi * 9 * 6, rel=0.1)
    assert f["nuclei_area_fraction"] == pytest.approx(16 * np.pi * 54 / 128**2, rel=0.1)
    # an empty site: finite, no nuclei
    empty = site_features(np.zeros((6, 64, 64), np.uint8))
    assert np.isfinite(empty).all() and empty[FEATURE_NAMES.index("nuclei_per_10k_px")] == 0


def test_segmentation_counts_rendered_nuclei():
    """Nuclei counted on sites of the renderer against the cells it placed (its first draws
    are the cell count and the cell centres; nuclei within 3 px of the frame count)."""
    errors = []
    for seed in range(12):
        rng = np.random.default_rng([9, seed])
        f = rng.normal(0, 0.35, 16).astype(np.float32)  # phenotypes: ~0.25 per feature
        batch = PlateBatch(
            gain=rng.lognormal(0, 0.2, 6),
            offset=np.full(6, 0.03),
            gradient=0.15,
            gradient_angle=1.0,
            blur=float(rng.uniform(0, 1)),
            density=0.0,
            well_gain_sd=0.05,
        )
        img = render_site(f, batch, 128, 14.0, np.random.default_rng(seed))
        replay = np.random.default_rng(seed)
        n = max(1, int(replay.poisson(14.0 * np.exp(0.7 * f[0] + batch.density))))
        centres = _place_cells(replay, n, 128, spacing=1.1 * 13.0 * np.exp(0.5 * f[3]))
        drawn = int(((centres >= -3) & (centres < 131)).all(1).sum())
        counted = int(segment_nuclei(img[0].astype(np.float32))[1].max())
        errors.append((counted - drawn) / drawn)
    assert np.mean(np.abs(errors)) < 0.15 and abs(np.mean(errors)) < 0.1


def _plate_normalised(wells, X):
    """Per plate, minus the control mean; divided by the pooled control sd."""
    Z = X.astype(np.float64).copy()
    ctrl = wells["is_control"].to_numpy()
    for idx in wells.groupby("plate").indices.values():
        Z[idx] -= Z[idx[ctrl[idx]]].mean(0)
    sd = Z[ctrl].std(0)
    return Z / np.where(sd > 1e-9, sd, 1.0)


@pytest.fixture(scope="module")
def tiny_features(tiny_world):
    return handcrafted_wells(tiny_world, progress=False)


def test_handcrafted_features_recover_the_planted_biology(tiny_world, tiny_features):
    wells, X = tiny_features
    assert list(wells.columns) == KEYS + ["perturbation", "is_control"]
    assert wells.equals(wells.sort_values(KEYS).reset_index(drop=True))
    assert X.dtype == np.float32 and X.shape == (len(wells), len(FEATURE_NAMES))
    shards = pd.concat(pd.read_parquet(f, columns=KEYS) for f in (tiny_world / "shards").iterdir())
    assert np.isfinite(X).all() and len(wells) == len(shards.drop_duplicates())
    truth = pd.read_parquet(tiny_world / "truth" / "perturbations.parquet").set_index(
        "perturbation"
    )
    Z = _plate_normalised(wells, X)
    pert = wells["perturbation"]
    active = (~wells["is_control"] & pert.map(truth["active"]).fillna(False)).to_numpy(bool)
    genes = pd.DataFrame(Z[active]).groupby(pert[active].to_numpy()).mean()
    V = genes.to_numpy() / np.linalg.norm(genes.to_numpy(), axis=1, keepdims=True)
    iu = np.triu_indices(len(V), 1)
    cos = (V @ V.T)[iu]
    complexes = truth.loc[genes.index, "complex"].to_numpy()
    same = (complexes[:, None] == complexes[None])[iu]
    # same-complex gene pairs sit in the top 5% of all pairs far more often than 5%
    top = (cos[same] >= np.percentile(cos, 95)).mean()
    assert same.sum() > 30 and top > 0.12
    assert cos[same].mean() - cos.mean() > 0.2
    # the nuclei count follows the planted density phenotype
    bio = make_biology(PRESETS["tiny"], seed=0)
    density = np.array([bio.gene_phenotype(p)[0] for p in pert])
    count = Z[:, FEATURE_NAMES.index("nuclei_per_10k_px")]
    assert spearmanr(count[active], density[active])[0] > 0.3


def test_handcrafted_respects_a_curation(tiny_world, tiny_features, tmp_path):
    wells, X = tiny_features
    chosen = wells.iloc[::5][KEYS]
    cur = tmp_path / "cur"
    cur.mkdir()
    chosen.to_parquet(cur / "wells.parquet", index=False)
    (cur / "curation.json").write_text(json.dumps({"strategy": "test", "source": str(tiny_world)}))
    w2, X2 = handcrafted_wells(open_dataset(cur), progress=False)  # an open Dataset too
    assert w2[KEYS].equals(chosen.reset_index(drop=True))
    assert np.allclose(X2, X[::5])


def test_handcrafted_features_are_remembered_per_dataset_and_selection(
    tiny_world, tiny_features, tmp_path
):
    """A ladder's phenoprints curation and its baselines both need the world's features:
    the second call returns the first's values (fresh copies, so a caller's edits do not
    leak), while a changed shard (its size or mtime) is measured again."""
    import shutil

    from scaling.evaluate import baselines

    wells, X = tiny_features
    w2, X2 = handcrafted_wells(tiny_world, progress=False)
    assert w2.equals(wells) and np.array_equal(X2, X)
    X2[:] = 0
    w2["perturbation"] = "edited"
    w3, X3 = handcrafted_wells(tiny_world, progress=False)
    assert np.array_equal(X3, X) and w3.equals(wells)
    copy = tmp_path / "world"
    shutil.copytree(tiny_world, copy)
    handcrafted_wells(copy, progress=False)  # another folder: measured, not reused
    (before,) = baselines._LAST_HANDCRAFTED
    first = sorted((copy / "shards").iterdir())[0]
    os.utime(first, ns=(0, 0))  # the shard changed (its mtime): measured again
    w4, X4 = handcrafted_wells(copy, progress=False)
    (after,) = baselines._LAST_HANDCRAFTED
    assert (str(first), first.stat().st_size, 0) in after[0] and before != after
    assert np.array_equal(X4, X)


def test_pixel_pca_wells(tiny_world, tiny_features):
    site = np.random.default_rng(0).integers(0, 255, (6, 130, 128)).astype(np.uint8)
    v = downsample(site, 32)
    assert v.shape == (6 * 32 * 32,)
    x = site[:, :128].astype(np.float64)  # the 2 edge rows are dropped
    assert np.allclose(v, x.reshape(6, 32, 4, 32, 4).mean((2, 4)).ravel() / 255, atol=1e-6)
    z = (x - x.mean((1, 2), keepdims=True)) / x.std((1, 2), keepdims=True)
    v = downsample(site, 32, standardize=True)
    assert np.allclose(v, z.reshape(6, 32, 4, 32, 4).mean((2, 4)).ravel(), atol=1e-4)
    hand, _ = tiny_features
    wells, X = pixel_pca_wells(tiny_world, dims=16, size=16, max_fit=150, progress=False)
    assert wells.equals(hand) and X.shape == (len(wells), 16) and X.dtype == np.float32
    assert np.isfinite(X).all() and X.std(0).min() > 0
    again = pixel_pca_wells(tiny_world, dims=16, size=16, max_fit=150, progress=False)[1]
    assert np.array_equal(X, again)
    with pytest.raises(InputError, match="dims"):
        pixel_pca_wells(tiny_world, dims=10**5, size=16, progress=False)
    with pytest.raises(InputError, match="size"):
        downsample(site, 256)
