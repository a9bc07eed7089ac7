"""The synthetic world: contract, determinism, and planted biology that is real and confounded."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from scaling.shards.format import shard_files
from scaling.world.biology import CONTROL, make_biology
from scaling.world.layout import make_layout
from scaling.world.presets import PRESETS
from scaling.world.render import render_site


def test_biology_structure_and_determinism():
    spec = PRESETS["small"]
    a, b = make_biology(spec, 7), make_biology(spec, 7)
    assert a.genes == b.genes and np.array_equal(a.phenotype, b.phenotype)
    assert not np.array_equal(a.phenotype, make_biology(spec, 8).phenotype)
    sizes = np.bincount(a.complex_of)
    assert sizes.min() >= 3 and sizes.max() <= 10 and sizes.sum() == spec.genes
    assert 0.35 < a.active.mean() < 0.75  # about half the genes have a phenotype
    assert np.all(np.linalg.norm(a.phenotype[~a.active], axis=1) == 0)
    # genes of one active complex point the same way; opposing complexes point apart
    unit = a.phenotype / np.maximum(np.linalg.norm(a.phenotype, axis=1, keepdims=True), 1e-9)
    within, opposed = [], []
    for c in range(a.complex_of.max() + 1):
        idx = np.flatnonzero((a.complex_of == c) & a.active)
        if len(idx) >= 2:
            within.append(np.mean(unit[idx] @ unit[idx].T))
        if c in a.opposes:
            other = np.flatnonzero((a.complex_of == a.opposes[c]) & a.active)
            if len(idx) and len(other):
                opposed.append(np.mean(unit[idx] @ unit[other].T))
    assert np.mean(within) > 0.7
    assert opposed and np.mean(opposed) < -0.5


def test_intensity_weight_moves_the_phenotype_into_morphology_and_texture():
    """``WorldSpec.intensity`` scales the per-channel intensity features of every direction
    (then renormalised): 1 is the world as before, 0 leaves intensity unchanged by any gene,
    and a phenotype's norm stays its strength."""
    import dataclasses

    from scaling.world.render import FEATURES

    spec = PRESETS["small"]
    intensity = np.array([f.startswith("intensity_") for f in FEATURES])
    assert intensity.sum() == 6
    base = make_biology(spec, 7)
    same = make_biology(dataclasses.replace(spec, intensity=1.0), 7)
    assert np.array_equal(base.phenotype, same.phenotype)
    share = {}
    for w in (0.0, 0.3, 1.0):
        bio = make_biology(dataclasses.replace(spec, intensity=w), 7)
        assert np.array_equal(bio.active, base.active)  # the same genes act, as strongly
        norms = np.linalg.norm(bio.phenotype, axis=1)
        assert np.allclose(norms, base.strength, rtol=1e-5)
        sq = bio.phenotype[bio.active] ** 2
        share[w] = sq[:, intensity].sum() / sq.sum()
    assert share[0.0] == 0.0 and share[0.3] < share[1.0] / 5
    assert 0.25 < share[1.0] < 0.5  # isotropic: about 6 of 16 features' worth


def test_render_is_deterministic_and_responds_to_phenotype():
    spec = PRESETS["tiny"]
    batch = make_layout(spec, make_biology(spec, 0), 0)[0].batch
    zero = np.zeros(16)
    a = render_site(zero, batch, 128, 14, np.random.default_rng(1))
    assert a.shape == (6, 128, 128) and a.dtype == np.uint8
    assert np.array_equal(a, render_site(zero, batch, 128, 14, np.random.default_rng(1)))
    bright = zero.copy()
    bright[4] = 1.5  # nuclei intensity feature
    means = [
        render_site(f, batch, 128, 14, np.random.default_rng(s))[0].mean()
        for s in range(4)
        for f in (zero, bright)
    ]
    assert np.mean(means[1::2]) > 1.5 * np.mean(means[0::2])


def test_tiny_world_follows_the_contract(tiny_world):
    truth = pd.read_parquet(tiny_world / "truth" / "perturbations.parquet")
    rel = pd.read_parquet(tiny_world / "truth" / "relationships.parquet")
    assert {"perturbation", "complex", "pathway", "active"} <= set(truth.columns)
    assert {"source", "gene_a", "gene_b"} <= set(rel.columns)
    assert {"complex", "pathway"} <= set(rel["source"])
    assert (rel["gene_a"] < rel["gene_b"]).all() and not rel.duplicated().any()
    # a complex pair is a pair of genes of the same complex
    cx = dict(zip(truth["perturbation"], truth["complex"], strict=True))
    pairs = rel[rel["source"] == "complex"]
    assert all(cx[a] == cx[b] for a, b in zip(pairs["gene_a"], pairs["gene_b"], strict=True))

    files = shard_files(tiny_world)
    meta = pd.concat(
        pq.read_table(
            f, columns=["experiment", "plate", "well", "site", "perturbation", "is_control"]
        ).to_pandas()
        for f in files
    )
    world = json.loads((tiny_world / "world.json").read_text())
    assert len(files) == world["plates"] and len(meta) == world["sites"]
    wells = meta.drop_duplicates(["experiment", "plate", "well"])
    # every gene once per experiment (replicates across experiments); controls on every plate
    genes = wells[~wells["is_control"]]
    assert (genes.groupby("perturbation")["experiment"].nunique() == world["experiments"]).all()
    assert set(genes["perturbation"]) == set(truth["perturbation"])
    assert (wells.groupby("plate")["is_control"].sum() >= 2).all()
    assert set(wells.loc[wells["is_control"], "perturbation"]) == {CONTROL}
    # layouts are randomised: a gene does not sit in the same well in every experiment
    same = genes.groupby("perturbation")["well"].nunique()
    assert (same > 1).mean() > 0.8


def test_synth_is_deterministic(tiny_world, tmp_path):
    from scaling.world.synth import synthesize

    synthesize(tmp_path / "again", preset="tiny", seed=0, progress=False)
    for f in shard_files(tiny_world):
        a, b = pq.read_table(f), pq.read_table(tmp_path / "again" / "shards" / f.name)
        assert a.equals(b)


def well_features(world) -> pd.DataFrame:
    """Per-well image statistics computed independently of the pipeline: per channel the
    mean, standard deviation and 99th percentile of the raw pixels, averaged over sites."""
    rows = []
    for f in shard_files(world):
        for r in pq.read_table(f).to_pylist():
            x = np.frombuffer(r["pixels"], r["dtype"]).reshape(r["channels"], -1).astype(float)
            feats = np.concatenate([x.mean(1), x.std(1), np.percentile(x, 99, axis=1)])
            rows.append(
                {
                    **{
                        k: r[k]
                        for k in ("experiment", "plate", "well", "perturbation", "is_control")
                    },
                    "f": feats,
                }
            )
    df = pd.DataFrame(rows)
    return df.groupby(
        ["experiment", "plate", "well", "perturbation", "is_control"], as_index=False
    )["f"].apply(lambda s: np.mean(np.stack(s.to_list()), 0))


@pytest.fixture(scope="module")
def features(tiny_world):
    df = well_features(tiny_world)
    truth = pd.read_parquet(tiny_world / "truth" / "perturbations.parquet")
    return df.merge(truth[["perturbation", "active"]], on="perturbation", how="left")


def test_batch_explains_raw_variation(features):
    """Experiments differ: the experiment explains a clear share of raw control variation."""
    ctrl = features[features["is_control"]]
    x = np.log(np.stack(ctrl["f"].to_list())[:, :6])  # log mean intensity per channel
    total = ((x - x.mean(0)) ** 2).sum(0)
    groups = ctrl["experiment"].to_numpy()
    between = sum(
        (groups == g).sum() * (x[groups == g].mean(0) - x.mean(0)) ** 2 for g in np.unique(groups)
    )
    r2 = between / total
    assert np.median(r2) > 0.3, r2


def test_active_genes_differ_from_controls_beyond_batch_and_inactive_do_not(features):
    """After normalising each plate by its own controls, active-gene wells sit far from the
    controls, inactive-gene wells no farther than held-out control wells."""
    x = np.log(np.stack(features["f"].to_list()) + 1.0)
    z = np.empty_like(x)
    for p in features["plate"].unique():
        on = (features["plate"] == p).to_numpy()
        c = on & features["is_control"].to_numpy()
        z[on] = (x[on] - x[c].mean(0)) / (x[c].std(0) + 1e-6)
    dist = np.sqrt((z**2).mean(1))
    ctrl = dist[features["is_control"].to_numpy()]
    active = dist[(features["active"] == True).to_numpy()]  # noqa: E712
    inactive = dist[(features["active"] == False).to_numpy()]  # noqa: E712
    assert np.median(active) > 2.0 * np.median(inactive)
    assert np.median(active) > 2.0 * np.median(ctrl)
    assert np.median(inactive) < 1.5 * np.median(ctrl)
