"""The whole-genome world (embeddings without images): contract, planted biology that TVN
recovers and that fades with strength, and the eval bench."""

import dataclasses
import json

import numpy as np
import pytest

from scaling.bench.eval import bench_eval
from scaling.evaluate.maps import map_benchmarks
from scaling.evaluate.table import read_embeddings
from scaling.world.biology import make_biology
from scaling.world.genome import genome_embeddings, synthesize_genome
from scaling.world.layout import make_layout
from scaling.world.presets import PRESETS
from tests.conftest import run_cli

BENCH_KEYS = {"bench", "case", "ours", "anchor", "anchor_value", "ratio", "unit"}
SMALL = dataclasses.replace(PRESETS["genome"], genes=3000)  # same generator, a sixth of the genes


def world(strength=1.0, seed=0):
    spec = dataclasses.replace(SMALL, strength=strength)
    bio = make_biology(spec, seed)
    wells, X = genome_embeddings(spec, bio, make_layout(spec, bio, seed), seed)
    return wells, X, bio.perturbations_table(), bio.relationships_table()


def test_genome_preset_writes_embeddings_and_truth(tmp_path):
    spec = PRESETS["genome"]
    assert not spec.images and spec.genes == 18000 and spec.wells_per_plate == 384
    rc, out, err = run_cli("synth", "--out", tmp_path / "g", "--preset", "genome")
    assert rc == 0, err
    assert "18000 genes" in out and "embeddings.parquet (128 dimensions" in out
    root = tmp_path / "g"
    assert sorted(p.name for p in root.iterdir()) == ["embeddings.parquet", "truth", "world.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["g"]  # no partial folder left
    info = json.loads((root / "world.json").read_text())
    wells, X = read_embeddings(root / "embeddings.parquet")
    assert X.shape == (info["wells"], 128) and info["embedding_dim"] == 128
    genes = wells[~wells.is_control]
    assert genes.groupby("perturbation").experiment.nunique().eq(4).all()  # once per experiment
    assert genes.perturbation.nunique() == 18000
    assert wells[wells.is_control].groupby("plate").size().eq(32).all()  # controls on every plate
    assert not wells.duplicated(["plate", "well"]).any()


def test_genome_world_is_deterministic_and_confounded():
    wells, X, *_ = world()
    _, Y, *_ = world()
    assert np.array_equal(X, Y)
    assert not np.array_equal(X, world(seed=1)[1])
    # uncorrected controls differ by experiment far more than by chance: a batch effect
    ctrl = wells.is_control.to_numpy()
    means = [
        X[ctrl & (wells.experiment == e).to_numpy()].mean(0) for e in wells.experiment.unique()
    ]
    spread = np.linalg.norm(means[0] - means[1])
    assert spread > 5 * np.linalg.norm(X[ctrl].std(0)) / np.sqrt(ctrl.sum() / 4)


@pytest.fixture(scope="module")
def recalls():
    out = {}
    for strength in (1.0, 0.5, 0.25):
        wells, X, pert, rel = world(strength)
        out[strength, True] = map_benchmarks(wells, X, pert, rel, tvn=True)
        if strength == 1.0:
            out[strength, False] = map_benchmarks(wells, X, pert, rel, tvn=False)
    return out


def test_tvn_recovers_the_planted_biology(recalls):
    on, off = recalls[1.0, True], recalls[1.0, False]
    assert on["recall"]["complex"] > 0.35  # chance is 0.10; about half the genes are silent
    assert on["recall"]["pathway"] > 0.15
    assert on["recall"]["complex"] > off["recall"]["complex"] + 0.12
    assert on["consistency"]["ks"] > off["consistency"]["ks"] + 0.15
    # about half of the genes have a phenotype; those should beat the control null
    assert 0.3 < on["consistency"]["fraction_significant"] < 0.6


def test_recall_falls_with_the_planted_strength(recalls):
    r = [recalls[s, True]["recall"]["complex"] for s in (1.0, 0.5, 0.25)]
    assert r[0] > r[1] > r[2] and r[0] - r[2] > 0.15
    ks = [recalls[s, True]["consistency"]["ks"] for s in (1.0, 0.5, 0.25)]
    assert ks[0] > ks[1] > ks[2]


def test_eval_bench_lines(tmp_path):
    synthesize_genome(tmp_path / "g", spec=dataclasses.replace(SMALL, genes=1500))
    lines = list(bench_eval(str(tmp_path / "g"), repeats=1))
    assert [x["case"] for x in lines] == ["genome-map", "genome-recall-only", "genome-map-mAP"]
    for x in lines:
        assert set(x) >= BENCH_KEYS and x["unit"] == "s" and x["perturbations"] == 1500
        assert x["ours"] > 0 and abs(x["ratio"] - x["ours"] / x["anchor_value"]) < 1e-12
        json.dumps(x)
    assert lines[0]["recall"]["complex"] > 0.25
    assert set(lines[0]["map"]) == {"activity", "consistency"}
