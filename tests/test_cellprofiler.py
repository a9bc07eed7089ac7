import json

import numpy as np
import pytest

from scaling.errors import InputError
from scaling.evaluate.baselines import RXRX3, stains
from scaling.evaluate.cellprofiler import (
    cellprofiler_wells,
    coloc_pairs,
    label_objects,
    site_cells,
    time_families,
)
from scaling.evaluate.evaluate import baseline_names, evaluate_models
from scaling.evaluate.table import read_embeddings
from scaling.shards.dataset import open_dataset, well_table
from tests.conftest import run_cli

KEYS = ["experiment", "plate", "well"]
CENTRES = [(24, 24), (24, 90), (64, 56), (100, 24), (100, 100)]


def _planted_site(rng) -> np.ndarray:
    """Six RxRx3 channels (128 x 128 uint8): five nuclei (discs of radius 7) inside cells
    (discs of radius 16) on ER, actin and Golgi; RNA and Mito random."""
    yy, xx = np.mgrid[0:128, 0:128]
    nuc, cell = np.zeros((128, 128), bool), np.zeros((128, 128), bool)
    for cy, cx in CENTRES:
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        nuc |= d2 <= 49
        cell |= d2 <= 256
    site = rng.integers(0, 30, (6, 128, 128)).astype(np.float32)
    site[0] += 180 * nuc
    for c in (1, 2, 5):
        site[c] += 120 * cell
    site[3:5] += rng.integers(0, 200, (2, 128, 128)) * cell
    return np.clip(site, 0, 255).astype(np.uint8)


def test_cp_measure_wiring_matches_numpy_on_planted_cells():
    """Per-cell mean intensity and area as site_cells reports them (row i: label i + 1)
    equal numpy on the label images; the planted objects are found, one cell each."""
    site = _planted_site(np.random.default_rng(0))
    pairs, skipped = coloc_pairs(RXRX3.names)
    assert [(a, b) for a, _, b, _ in pairs] == [("DNA", "RNA"), ("ER", "Mito"), ("AGP", "Mito")]
    assert skipped == []
    nuclei, cells = label_objects(site, RXRX3)
    assert nuclei.max() == cells.max() == len(CENTRES)
    assert sorted(cells[cy, cx] for cy, cx in CENTRES) == list(range(1, 6))
    assert (cells[nuclei > 0] == nuclei[nuclei > 0]).all()  # cell i holds nucleus i
    df = site_cells(site, RXRX3, pairs)
    assert len(df) == len(CENTRES)
    for lab in range(1, 6):
        row, m, n = df.iloc[lab - 1], cells == lab, nuclei == lab
        assert row["Cells_AreaShape_Area"] == m.sum()
        assert row["Nuclei_AreaShape_Area"] == n.sum()
        assert abs(m.sum() - np.pi * 256) < 0.1 * np.pi * 256  # the planted cell disc
        for c, ch in enumerate(RXRX3.names):
            mean = site[c][m].astype(np.float64).mean() / 255
            assert row[f"Cells_{ch}_Intensity_MeanIntensity"] == pytest.approx(mean, rel=1e-5)
            nmean = site[c][n].astype(np.float64).mean() / 255
            assert row[f"Nuclei_{ch}_Intensity_MeanIntensity"] == pytest.approx(nmean, rel=1e-5)
        r = np.corrcoef(site[0][m].astype(float), site[3][m].astype(float))[0, 1]
        assert row["Cells_DNA_RNA_Correlation_Pearson"] == pytest.approx(r, abs=1e-4)
    assert not any("Location" in k or "Center_" in k for k in df.columns)
    assert site_cells(np.zeros((6, 64, 64), np.uint8), RXRX3, pairs).empty
    t = time_families([site], RXRX3, pairs)
    assert {"segment", "intensity", "texture", "granularity", "pearson"} <= set(t["family"])


def test_jump_names_pairs_and_unknown_baselines():
    jump = stains(("DNA", "ER", "RNA", "AGP", "Mito"))
    pairs, skipped = coloc_pairs(jump.names)
    assert [(a, i, b, j) for a, i, b, j in pairs] == [
        ("DNA", 0, "RNA", 2),
        ("ER", 1, "Mito", 4),
        ("AGP", 3, "Mito", 4),
    ]
    assert coloc_pairs(("DNA", "ER", "AGP"))[1] == ["DNA-RNA", "ER-Mito", "AGP-Mito"]
    site = _planted_site(np.random.default_rng(1))[[0, 1, 3, 2, 4]]  # as DNA, ER, RNA, AGP, Mito
    df = site_cells(site, jump, pairs)
    assert len(df) == len(CENTRES) and "Cells_AGP_Mito_Correlation_RWC_1" in df.columns
    assert baseline_names(True) == ("random-init", "handcrafted", "pixel-pca")
    with pytest.raises(InputError, match="cellprofilr"):
        baseline_names(["handcrafted", "cellprofilr"])


def test_evaluate_cli_names_an_unknown_baseline(tmp_path):
    out = tmp_path / "o"
    rc, _, err = run_cli(
        "evaluate", "--checkpoint", tmp_path, "--data", tmp_path, "--out", out,
        "--baselines", "handcrafted,cellprofilr",
    )  # fmt: skip
    assert rc == 2 and "cellprofilr" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cellprofiler_baseline_on_the_tiny_world(tiny_world, tmp_path):
    """Through ``scaling evaluate``'s models path: one sampled site per well, a finite
    profile per well, complex recall above chance, its cost in summary.json."""
    s = evaluate_models(
        {},
        tiny_world,
        tmp_path / "eval",
        features=["cellprofiler"],
        sites_per_well=1,
        progress=False,
    )
    wells, X = read_embeddings(
        tmp_path / "eval" / "embeddings" / "cellprofiler" / "block_00.parquet"
    )
    expected = well_table(open_dataset(tiny_world))
    assert len(wells) == len(expected) == len(wells[KEYS].drop_duplicates())
    assert X.shape[1] == s["cellprofiler"]["features"] > 300 and np.isfinite(X).all()
    saved = json.loads((tmp_path / "eval" / "summary.json").read_text())["cellprofiler"]
    assert saved["sites_per_well"] == 1 and saved["seconds_per_well"] > 0
    assert saved["recall_complex"] > 0.10  # chance: the null's 90th percentile
    with pytest.raises(InputError, match="sites_per_well"):
        cellprofiler_wells(tiny_world, sites_per_well=0)
