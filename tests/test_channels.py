"""Channels come from the data: a 5-channel (JUMP) world trains, embeds and benchmarks like
a 6-channel one; the hand-crafted features map stain names to their roles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scaling.errors import InputError
from scaling.evaluate.baselines import FEATURE_NAMES, site_features, stains
from scaling.shards.dataset import open_dataset
from tests.conftest import run_cli

SMOKE = Path(__file__).parent.parent / "jobs/configs/smoke.yaml"
JUMP = ("DNA", "ER", "RNA", "AGP", "Mito")


def test_stain_names_map_to_roles_and_unknown_ones_are_named():
    s = stains(JUMP)
    assert (s.nuclei, s.cell, s.rna, s.unmapped) == (0, (1, 3), 2, ())
    rx = stains(("nuclei", "er", "actin", "rna", "mito", "golgi"))
    assert (rx.nuclei, rx.cell, rx.rna) == (0, (1, 2, 5), 3) and rx.feature_names == FEATURE_NAMES
    odd = stains(("Hoechst", "Phalloidin", "Lysotracker"))
    assert odd.unmapped == ("Lysotracker",) and odd.rna is None
    assert "nucleoli_per_nucleus" not in odd.feature_names
    assert len(site_features(np.zeros((3, 32, 32), np.uint8), odd)) == len(odd.feature_names)
    with pytest.raises(InputError, match="no nuclei stain"):
        stains(("ER", "Mito"))


def test_jump_site_features_equal_the_rxrx3_ones_of_the_same_stains(tiny_world):
    """The same rendered cells, as six RxRx3 channels and as JUMP's five (AGP = actin +
    Golgi): nuclei, texture and intensity features of the shared stains agree exactly."""
    import pyarrow.parquet as pq

    from scaling.stream.crops import decode_sites
    from scaling.world.render import in_stains

    site = decode_sites(pq.read_table(open_dataset(tiny_world).files[0]).slice(0, 1))[0]
    six = dict(zip(FEATURE_NAMES, site_features(site), strict=True))
    jump = stains(JUMP)
    five = dict(zip(jump.feature_names, site_features(in_stains(site, "jump"), jump), strict=True))
    for rx, j in (("nuclei", "DNA"), ("er", "ER"), ("rna", "RNA"), ("mito", "Mito")):
        for f in ("mean", "p90", "gradient_energy", "granularity_5"):
            assert five[f"{j}_{f}"] == pytest.approx(six[f"{rx}_{f}"], rel=1e-6)
    for f in ("nuclei_per_10k_px", "nucleus_area_median", "nucleoli_per_nucleus"):
        assert five[f] == six[f]


def test_a_five_channel_world_trains_embeds_evaluates_and_benchmarks(
    jump_world, tiny_world, tmp_path
):
    from scaling.config import load_config
    from scaling.evaluate.baselines import handcrafted_wells
    from scaling.evaluate.evaluate import evaluate
    from scaling.evaluate.maps import benchmark
    from scaling.evaluate.screen import embed_screen
    from scaling.train.pretrain import pretrain

    assert open_dataset(jump_world).channel_names == JUMP
    cfg = load_config(
        SMOKE,
        [f"data.path={jump_world}", f"run.dir={tmp_path / 'run'}", "train.workers=0",
         "train.steps=10", "train.checkpoint_every=10", "train.val_every=10"],
    )  # fmt: skip
    result = pretrain(cfg)
    assert np.isfinite(result["loss"])
    summary = evaluate(tmp_path / "run", jump_world, tmp_path / "run" / "eval", progress=False)
    assert {"mae", "random-init", "handcrafted", "pixel-pca"} <= set(summary)
    assert 0 <= summary["handcrafted"]["recall_complex"] <= 1
    wells, X = handcrafted_wells(jump_world, progress=False)  # remembered: not measured again
    assert X.shape == (len(wells), len(stains(JUMP).feature_names)) and np.isfinite(X).all()
    emb = tmp_path / "emb.parquet"
    s = embed_screen(tmp_path / "run", jump_world, emb, block="best", progress=False)
    assert s["block"] == summary["mae"]["best_block"]  # b* of the run's evaluation (RUN/eval)
    b = benchmark(emb, jump_world / "truth", tmp_path / "b.json")
    assert set(b["recall"]) == {"complex", "pathway"} and b["n_perturbations"] > 0
    assert json.loads((tmp_path / "b.json").read_text())["recall"] == b["recall"]
    code, _, err = run_cli(  # a model trained on five channels refuses six
        "embed", "--checkpoint", tmp_path / "run", "--data", tiny_world,
        "--out", tmp_path / "x.parquet", "--block", 1,
    )  # fmt: skip
    assert code == 2 and "the model was trained on ['DNA'" in err
