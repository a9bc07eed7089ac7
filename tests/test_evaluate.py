"""Evaluation of a model: every-block well embeddings through Ray Data actors against a
direct computation, ``scaling evaluate`` end to end on a smoke-trained MAE, in-training
probes, and the phenoprints curation against the planted truth."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from scaling.config import load_config
from scaling.evaluate.embed import ModelSpec, build, embed_wells
from scaling.shards.dataset import open_dataset
from scaling.stream.crops import decode_sites, grid_tiles
from tests.conftest import run_cli

SMOKE = "jobs/configs/smoke.yaml"


def direct_well_embedding(model, data, well: dict) -> np.ndarray:
    """(depth, D): every tile of every site of one well through embed_blocks, averaged."""
    ds = open_dataset(data)
    tiles = []
    for f in ds.files:
        t = pq.read_table(f)
        meta = t.select(["experiment", "plate", "well"]).to_pandas()
        keep = np.flatnonzero(
            (meta["experiment"] == well["experiment"])
            & (meta["plate"] == well["plate"])
            & (meta["well"] == well["well"])
        )
        tiles += [grid_tiles(s, 64) for s in decode_sites(t, keep)]
    with torch.no_grad():
        return model.embed_blocks(torch.from_numpy(np.concatenate(tiles))).mean(0).numpy()


def test_well_embeddings_are_tile_means_of_every_block(tiny_world, ray_session):
    spec = ModelSpec(load_config(SMOKE), None, seed=3)  # random init, seeded
    wells, E = embed_wells(tiny_world, spec, batch_size=50, progress=False)
    assert E.shape == (2, len(wells), 32) and E.dtype == np.float32
    assert not wells.duplicated(["experiment", "plate", "well"]).any()
    model = build(spec)
    for i in (0, 57, len(wells) - 1):
        want = direct_well_embedding(model, tiny_world, wells.iloc[i].to_dict())
        np.testing.assert_allclose(E[:, i], want, rtol=1e-4, atol=1e-5)


def test_embedding_a_curation_keeps_only_its_wells(tiny_world, ray_session, tmp_path):
    from scaling.curate.select import curate

    curate(tiny_world, "random", tmp_path / "cur", seed=1, wells_count=40)
    spec = ModelSpec(load_config(SMOKE), None, seed=3)
    full, E_full = embed_wells(tiny_world, spec, progress=False)
    sub, E_sub = embed_wells(tmp_path / "cur", spec, progress=False)
    assert len(sub) == 40
    key = ["experiment", "plate", "well"]
    idx = full.reset_index().merge(sub[key], on=key)["index"].to_numpy()
    np.testing.assert_allclose(E_sub, E_full[:, idx], rtol=1e-5, atol=1e-6)


def test_in_training_probe_set_embeds_like_the_direct_computation(tiny_world):
    from scaling.evaluate.during import embed_set, probe_set

    ps = probe_set(tiny_world, 64, max_wells=20, seed=0)
    wells = pd.DataFrame(ps["wells"])
    assert 15 <= len(wells) <= 20  # whole perturbations (3 wells each), at most 20 wells
    assert (wells["perturbation"].value_counts() == 3).all()
    assert not any(ps["wells"]["is_control"])
    # brute force: each well's tiles are the grid tiles of the first site of a well of its
    # perturbation, read from the shards whole
    from scaling.stream.crops import grid_tiles

    firsts = {}
    for f in sorted((tiny_world / "shards").glob("*.parquet")):
        for r in pq.read_table(f).to_pylist():
            if r["site"] == 0:
                px = np.frombuffer(r["pixels"], np.uint8).reshape(6, 128, 128)
                firsts.setdefault(r["perturbation"], []).append(grid_tiles(px, 64))
    for i, pert in enumerate(wells["perturbation"]):
        mine = ps["tiles"][ps["well"] == i]
        assert any(np.array_equal(mine, t) for t in firsts[pert])
    model = build(ModelSpec(load_config(SMOKE), None, seed=1))
    E = embed_set(model, ps, 7, torch.device("cpu"))
    for i in (0, len(wells) - 1):
        tiles = torch.from_numpy(ps["tiles"][ps["well"] == i])
        with torch.no_grad():
            want = model.embed_blocks(tiles).mean(0).numpy()
        np.testing.assert_allclose(E[:, i], want, rtol=1e-4, atol=1e-5)


def test_scaling_evaluate_end_to_end(smoke_run, tiny_world, tmp_path):
    from scaling.evaluate.maps import map_benchmarks
    from scaling.evaluate.table import read_embeddings

    _, _, run_dir = smoke_run
    out = tmp_path / "eval"
    rc, stdout, stderr = run_cli(
        "evaluate", "--checkpoint", run_dir, "--data", tiny_world, "--out", out
    )
    assert rc == 0, stderr
    m = pd.read_parquet(out / "metrics.parquet")
    assert list(m.columns) == ["model", "block", "metric", "value"]
    assert set(m["model"]) == {"mae", "random-init", "handcrafted", "pixel-pca"}
    metrics = {
        "recall_complex",
        "recall_pathway",
        "consistency_ks",
        "consistency_cvm",
        "consistency_fraction_significant",
        "probe_perturbation",
        "probe_perturbation_val",
        "probe_pathway",
        "probe_pathway_val",
        "map_activity",
        "map_activity_fraction_significant",
        "map_consistency_complex",
        "map_consistency_complex_fraction_significant",
        "map_consistency_pathway",
        "map_consistency_pathway_fraction_significant",
    }
    mae = m[m["model"] == "mae"]
    for block in (1, 2):  # cpu-xs has two blocks; every metric for each
        assert set(mae.loc[mae["block"] == block, "metric"]) == metrics
    assert np.isfinite(m["value"]).all()

    # the written embeddings and the metrics table agree with a fresh benchmark of them
    wells, x = read_embeddings(out / "embeddings" / "mae" / "block_02.parquet")
    truth = tiny_world / "truth"
    again = map_benchmarks(
        wells,
        x,
        pd.read_parquet(truth / "perturbations.parquet"),
        pd.read_parquet(truth / "relationships.parquet"),
    )
    row = mae[(mae["block"] == 2) & (mae["metric"] == "recall_complex")]
    assert row["value"].item() == again["recall"]["complex"]
    row = mae[(mae["block"] == 2) & (mae["metric"] == "map_consistency_pathway")]
    assert row["value"].item() == again["map"]["consistency"]["pathway"]["mean_map"]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["mae"]["blocks"] == 2 and summary["mae"]["best_block"] in (1, 2)
    assert summary["handcrafted"]["best_block"] == 0
    # the hand-crafted baseline recovers the planted complexes well above chance (0.10)
    assert summary["handcrafted"]["recall_complex"] > 0.2


def test_evaluate_rejects_a_folder_that_is_not_a_checkpoint(tiny_world, tmp_path):
    rc, _, stderr = run_cli(
        "evaluate", "--checkpoint", tmp_path, "--data", tiny_world, "--out", tmp_path / "o"
    )
    assert rc == 2 and str(tmp_path) in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_phenoprints_keeps_consistent_active_genes(tiny_world, ray_session, tmp_path):
    from scaling.curate.select import curate

    info = curate(tiny_world, "phenoprints", tmp_path / "pheno", seed=0)
    truth = pd.read_parquet(tiny_world / "truth" / "perturbations.parquet")
    base_rate = truth["active"].mean()
    t = info["truth"]
    assert t["precision"] > max(0.9, base_rate)  # consistent genes are the active ones
    assert t["recall"] > 0.3
    wells = pd.read_parquet(tmp_path / "pheno" / "wells.parquet")
    all_controls = 6 * 8  # tiny: 6 plates x 8 controls
    assert info["control_wells"] == round(0.3 * all_controls)
    # every kept gene is kept with all its wells
    genes = wells.loc[~wells["is_control"], "perturbation"]
    assert (genes.value_counts() == 3).all()

    rc, stdout, stderr = run_cli(
        "curate",
        "--data",
        tiny_world,
        "--strategy",
        "random",
        "--like",
        tmp_path / "pheno",
        "--out",
        tmp_path / "rand",
    )
    assert rc == 0, stderr
    rand = json.loads((tmp_path / "rand" / "curation.json").read_text())
    assert rand["wells"] == info["wells"]
    assert rand["truth"]["precision"] < t["precision"]

    rc, _, stderr = run_cli(
        "curate",
        "--data",
        tiny_world,
        "--strategy",
        "phenoprints",
        "--fraction",
        "0.5",
        "--out",
        tmp_path / "bad",
    )
    assert rc == 2 and "--fraction" in stderr
