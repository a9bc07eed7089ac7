"""Compounds in the world and compound-gene activity (ARCHITECTURE section 4)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from scaling.errors import InputError
from scaling.evaluate.compounds import (
    average_precision,
    candidates,
    compound_gene_activity,
    expected_random_ap,
    gene_wells,
)
from scaling.evaluate.evaluate import score_blocks
from scaling.evaluate.maps import map_benchmarks
from scaling.evaluate.probes import task_labels
from scaling.evaluate.table import read_compounds
from scaling.world.biology import make_biology
from scaling.world.compounds import make_compounds
from scaling.world.genome import genome_embeddings
from scaling.world.layout import make_layout
from scaling.world.presets import PRESETS

SPEC = dataclasses.replace(
    PRESETS["genome"], genes=300, compounds=30, wells_per_plate=96, controls_per_plate=16
)


def brute_ap(scores, positive) -> float:
    """AP by its definition: at each distinct score t (decreasing), add the rise in recall
    times the precision of everything scored >= t."""
    scores, positive = np.asarray(scores, float), np.asarray(positive, bool)
    ap, seen = 0.0, 0
    for t in sorted(set(scores), reverse=True):
        top = scores >= t
        hits = int((top & positive).sum())
        ap += (hits - seen) / positive.sum() * hits / top.sum()
        seen = hits
    return ap


def test_average_precision_with_ties_against_its_definition():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 12))
        s, y = rng.integers(0, 4, n).astype(float), rng.random(n) < 0.4
        if y.any():
            assert average_precision(s, y) == pytest.approx(brute_ap(s, y), abs=1e-12)
    # batched rows, and the no-tie case: mean precision at the positives' ranks
    S = rng.random((5, 9))
    y = np.arange(9) < 3
    for row, ap in zip(S, average_precision(S, y), strict=True):
        ranks = 1 + np.flatnonzero(y[np.argsort(-row)])
        assert ap == pytest.approx(np.mean(np.arange(1, 4) / ranks))
    assert np.isnan(average_precision([0.3, 0.2], [False, False]))


def hand_example():
    """Five genes, three compounds, wells in two experiments (tvn off): gene g's two wells
    are v_g +- d, so its mean is v_g; control wells are far off and must be ignored."""
    v = {
        "G1": (1, 0, 0),
        "G2": (0, 1, 0),
        "G3": (1, 1, 0),
        "G4": (0, 0, 1),
        "G5": (-1, 0, 0),
        "A@1": (0, 0, 1),
        "A@10": (1, 0, 1),
        "B@1": (1, 2, 0),
        "C@1": (1, 0, 0),
    }
    rows, X, d = [], [], np.array([0.3, -0.2, 0.1])
    for name, vec in v.items():
        for e, sign in (("E1", 1), ("E2", -1)):
            rows.append((e, f"{e}-P1", name, False))
            X.append(np.array(vec, float) + sign * d)
    for e in ("E1", "E2"):
        rows += [(e, f"{e}-P1", "NTC", True)] * 2
        X += [np.array([50.0, -40.0, 7.0]), np.array([-9.0, 30.0, 80.0])]
    wells = pd.DataFrame(rows, columns=["experiment", "plate", "perturbation", "is_control"])
    wells["well"] = [f"W{i:02d}" for i in range(len(wells))]
    compounds = pd.DataFrame(
        [
            ("A@1", "A", 1.0, "G1"),
            ("A@10", "A", 10.0, "G1"),
            ("B@1", "B", 1.0, "G2;G4"),
            ("C@1", "C", 1.0, "GX"),  # its target is not in the map: C is left out
        ],
        columns=["perturbation", "compound", "concentration", "targets"],
    )
    return wells, np.array(X), compounds


def test_compound_gene_ap_equals_a_hand_computation():
    wells, X, compounds = hand_example()
    r = compound_gene_activity(wells, X, compounds, tvn=False, seed=3, repeats=2000)
    # Five genes < 20, so every non-target gene is a negative. |cos|, max over doses:
    # A: A@1 = (0,0,1) hits only G4 (1); A@10 = (1,0,1) gives G1 = G4 = G5 = 1/sqrt2,
    #    G3 = 1/2, G2 = 0. Scores: G4 1 > G1 = G5 0.707 > G3 0.5 > G2 0; positive G1 ties
    #    with the negative G5 below G4, so recall reaches 1 at precision 1/3: AP = 1/3.
    # B = (1,2,0): G3 3/sqrt10 = 0.949 > G2 2/sqrt5 = 0.894 > G1 = G5 1/sqrt5 > G4 0;
    #    positives G2 (precision 1/2) and G4 (last: 2/5): AP = (1/2)(1/2 + 2/5) = 0.45.
    assert r["per_compound"] == pytest.approx({"A": 1 / 3, "B": 0.45}, abs=1e-12)
    assert r["n_compounds"] == 2
    assert r["ap"] == pytest.approx((1 / 3 + 0.45) / 2, abs=1e-12)
    # random scores: E[AP] = (P-1)/(n-1) + (n-P)/(n-1) H_n/n with n = 5 candidates
    h5 = sum(1 / k for k in range(1, 6))
    expected = (h5 / 5 + (1 / 4 + 3 / 4 * h5 / 5)) / 2
    assert expected_random_ap(5, 1) == pytest.approx(h5 / 5)
    assert abs(r["random_mean"] - expected) < 4 * r["random_sd"] / np.sqrt(2000)
    assert r["z"] == pytest.approx((r["ap"] - r["random_mean"]) / r["random_sd"])


def test_negatives_are_seeded_draws_of_other_genes():
    genes = pd.Index([f"G{i:03d}" for i in range(100)])
    table = pd.DataFrame(
        {
            "perturbation": ["X@1", "Y@1"],
            "compound": ["X", "Y"],
            "concentration": [1.0, 1.0],
            "targets": ["G001", ";".join(f"G{i:03d}" for i in range(10, 22))],
        }
    )
    (x, y), again = candidates(table, genes, seed=1), candidates(table, genes, seed=1)
    assert [len(x["genes"]), len(y["genes"])] == [1 + 20, 12 + 24]  # max(2P, 20) negatives
    for c in (x, y):
        assert not set(genes[c["genes"][~c["labels"]]]) & set(
            table.set_index("compound").loc[c["compound"], "targets"].split(";")
        )
        assert len(set(c["genes"])) == len(c["genes"])
    assert np.array_equal(x["genes"], again[0]["genes"])
    assert not np.array_equal(x["genes"], candidates(table, genes, seed=2)[0]["genes"])


def test_gene_wells_drop_treatments_and_controls_of_compound_only_plates():
    wells = pd.DataFrame(
        [  # P1 genes only, P2 mixed, P3 treatments only; plate names repeat across experiments
            ("E1", "P1", "G1", False),
            ("E1", "P1", "NTC", True),
            ("E1", "P2", "G2", False),
            ("E1", "P2", "A@1", False),
            ("E1", "P2", "NTC", True),
            ("E1", "P3", "A@10", False),
            ("E1", "P3", "NTC", True),
            ("E2", "P2", "A@1", False),
            ("E2", "P2", "NTC", True),
        ],
        columns=["experiment", "plate", "perturbation", "is_control"],
    )
    table = pd.DataFrame({"perturbation": ["A@1", "A@10"]})
    got = gene_wells(wells, table)
    assert got.tolist() == [True, True, True, False, True, False, False, False, False]


@pytest.fixture(scope="module")
def planted():
    """A 300-gene embeddings-only world with 30 compounds, and the same world without."""
    bio = make_biology(SPEC, 0)
    comp = make_compounds(SPEC, bio, 0)
    plates = make_layout(SPEC, bio, 0, comp.treatment_names())
    wells, X = genome_embeddings(SPEC, bio, plates, 0, treatments=comp.phenotypes())
    plain = dataclasses.replace(SPEC, compounds=0)
    wells0, X0 = genome_embeddings(plain, bio, make_layout(plain, bio, 0), 0)
    truth = (bio.perturbations_table(), bio.relationships_table())
    return dict(wells=wells, X=X, wells0=wells0, X0=X0, truth=truth, table=comp.table())


def test_compound_wells_come_after_an_unchanged_gene_screen(planted):
    wells, wells0 = planted["wells"], planted["wells0"]
    n = len(wells0)
    assert wells.iloc[:n].equals(wells0) and np.array_equal(planted["X"][:n], planted["X0"])
    tail = wells.iloc[n:]
    assert tail["plate"].str.contains("-C").all()
    treat = tail[~tail["is_control"]]
    assert (
        treat.groupby("experiment")["perturbation"]
        .apply(lambda p: sorted(p) == sorted(planted["table"]["perturbation"]))
        .all()
    )
    assert (tail.groupby("plate")["is_control"].sum() == SPEC.controls_per_plate).all()


def test_gene_benchmarks_ignore_compounds_and_compounds_beat_random(planted):
    p, r = planted["truth"]
    table = planted["table"]
    m = map_benchmarks(planted["wells"], planted["X"], p, r, compounds=table)
    cg = m.pop("compound_gene")
    assert m == map_benchmarks(planted["wells0"], planted["X0"], p, r)  # exactly
    # scaling evaluate's rows: the same map benchmarks plus the compound rows; the probes
    # see no compound well (they are in no probe task, so neither trained nor scored)
    rows, _ = score_blocks(
        planted["wells"], planted["X"][None], [1], p, r, progress=False, compounds=table
    )
    got = dict(zip(rows["metric"], rows["value"], strict=True))
    assert got["recall_complex"] == m["recall"]["complex"]
    assert got["consistency_ks"] == m["consistency"]["ks"]
    assert (got["compound_gene_ap"], got["compound_gene_z"]) == (cg["ap"], cg["z"])
    compound_plates = planted["wells"]["plate"].str.contains("-C").to_numpy()
    for labels in task_labels(planted["wells"], p).values():
        assert all(v is None for v in labels[compound_plates])
    assert cg["n_compounds"] == 30 and cg["z"] > 8 and cg["ap"] > cg["random_mean"] + 0.3
    # the random repeats match the closed form of a random ranking's AP on these candidates
    wells = planted["wells"]
    genes = pd.Index(
        sorted(set(wells.loc[~wells["is_control"], "perturbation"]) - set(table["perturbation"]))
    )
    closed = np.mean(
        [
            expected_random_ap(len(c["labels"]), int(c["labels"].sum()))
            for c in candidates(table, genes)
        ]
    )
    assert abs(cg["random_mean"] - closed) < 4 * cg["random_sd"] / np.sqrt(cg["repeats"])


def test_inactive_compounds_are_annotated_but_silent(planted):
    p, r = planted["truth"]
    table = planted["table"]
    inactive = table[~table["active"]]
    assert inactive["compound"].nunique() >= 3 and (inactive["targets"].str.len() > 0).all()
    assert table.loc[table["promiscuous"], "targets"].str.count(";").min() >= 3
    go = {
        k: compound_gene_activity(planted["wells"], planted["X"], t, seed=0)
        for k, t in (("all", table), ("active", table[table["active"]]), ("inactive", inactive))
    }
    assert go["active"]["ap"] > go["all"]["ap"] > go["inactive"]["ap"]
    assert abs(go["inactive"]["z"]) < 3 < 8 < go["active"]["z"]


def test_synth_and_benchmark_carry_compounds_and_bad_tables_are_named(tmp_path, capsys):
    import json

    from scaling.cli import main
    from scaling.world.synth import synthesize

    spec = dataclasses.replace(SPEC, genes=60, compounds=5, concentrations=3)
    s = synthesize(tmp_path / "w", preset="cpd", spec=spec, progress=False)
    assert (s["compounds"], s["treatments"]) == (5, 15)
    truth = tmp_path / "w" / "truth"
    t = read_compounds(truth)
    assert list(t["perturbation"][:3]) == ["CPD0001@1.00", "CPD0001@3.16", "CPD0001@10.0"]
    assert t["concentration"].dtype == float
    assert t.groupby("compound")["targets"].nunique().eq(1).all()
    assert read_compounds(tmp_path) is None  # no compounds.parquet: no compound benchmark
    # scaling benchmark: the JSON and the printout carry it
    out = tmp_path / "b.json"
    args = ["benchmark", "--embeddings", tmp_path / "w" / "embeddings.parquet"]
    assert main([*map(str, args), "--truth", str(truth), "--out", str(out)]) == 0
    cg = json.loads(out.read_text())["compound_gene"]
    assert set(cg) >= {"ap", "random_mean", "random_sd", "z", "n_compounds"}
    assert "compounds    AP" in capsys.readouterr().out
    t.drop(columns="targets").to_parquet(truth / "compounds.parquet")
    with pytest.raises(InputError, match=r"compounds\.parquet: missing column\(s\) targets"):
        read_compounds(truth)


def test_rendered_compound_wells_show_their_treatment_phenotype(tmp_path):
    """render_plate draws a treatment well from its compound phenotype (site streams as
    for genes: (seed, 3, plate, well, site), jitter (seed, 4, plate, well))."""
    import pyarrow.parquet as pq

    from scaling.shards.format import decode_pixels
    from scaling.world.render import render_site
    from scaling.world.synth import WELL_JITTER, render_plate

    spec = dataclasses.replace(PRESETS["tiny"], compounds=4, concentrations=2, sites=1, size=64)
    bio = make_biology(spec, 0)
    comp = make_compounds(spec, bio, 0)
    plates = make_layout(spec, bio, 0, comp.treatment_names())
    plate = next(p for p in plates if p.compound)
    phen = comp.phenotypes()
    render_plate(plate, spec, bio, 0, str(tmp_path / "c.parquet"), phen)
    t = pq.read_table(tmp_path / "c.parquet").to_pylist()
    strongest = max(phen, key=lambda k: np.linalg.norm(phen[k]))
    assert np.linalg.norm(phen[strongest]) > 0.5
    w = next(i for i, (_, pert, _) in enumerate(plate.wells) if pert == strongest)
    row = t[w]
    assert row["perturbation"] == strongest and not row["is_control"]
    img = decode_pixels(row["pixels"], row["channels"], row["height"], row["width"], "uint8")
    jitter = np.random.default_rng([0, 4, plate.index, w]).normal(0, WELL_JITTER, 16)

    def site(p):
        rng = np.random.default_rng([0, 3, plate.index, w, 0])
        return render_site(p + jitter, plate.batch, spec.size, spec.cells, rng)

    assert np.array_equal(img, site(phen[strongest]))
    assert not np.array_equal(img, site(np.zeros(16)))
