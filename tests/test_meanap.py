"""mAP (scaling.evaluate.meanap) against copairs itself and against planted truths."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scaling.evaluate import meanap, recall

copairs_map = pytest.importorskip("copairs.map")
from copairs.compute import get_null_dists  # noqa: E402
from copairs.matching import assign_reference_index  # noqa: E402


def planted_wells(seed=0, plates=4, perts=12, controls=5, dim=16, active=6):
    """Wells on ``plates`` plates: each perturbation once per plate (one twice on plate 0),
    ``controls`` control wells per plate; the first ``active`` perturbations carry a
    planted direction, the others are noise like the controls."""
    rng = np.random.default_rng(seed)
    rows, X = [], []
    direction = rng.standard_normal((perts, dim)) * 1.5
    for pl in range(plates):
        for g in range(perts):
            for _ in range(2 if (g == 0 and pl == 0) else 1):
                rows.append((f"P{pl}", f"G{g:02d}", False))
                X.append(rng.standard_normal(dim) + (direction[g] if g < active else 0))
        for _ in range(controls):
            rows.append((f"P{pl}", "NTC", True))
            X.append(rng.standard_normal(dim))
    wells = pd.DataFrame(rows, columns=["plate", "perturbation", "is_control"])
    wells["experiment"] = "E1"
    return wells, np.array(X)


def copairs_activity(wells, X, null_size, cache):
    meta = assign_reference_index(wells[["perturbation", "plate", "is_control"]], "is_control")
    ap = copairs_map.average_precision(
        meta,
        X,
        pos_sameby=["perturbation", "Metadata_Reference_Index"],
        pos_diffby=["plate"],
        neg_sameby=["plate"],
        neg_diffby=["perturbation", "Metadata_Reference_Index"],
        progress_bar=False,
    )
    m = copairs_map.mean_average_precision(
        ap, ["perturbation"], null_size, 0.05, seed=0, progress_bar=False, cache_dir=cache
    )
    return ap, m


def copairs_nulls(cache):
    return lambda confs, size, seed: get_null_dists(
        confs, size, seed, cache_dir=cache, progress_bar=False
    )


def check_against_copairs(ours_ap, ap, m, null_size, cache):
    """APs per query, then mAP, p-value and BH per perturbation equal copairs'."""
    ap = ap[ap["n_pos_pairs"] > 0]
    assert len(ours_ap) == len(ap)
    np.testing.assert_allclose(ours_ap["average_precision"], ap["average_precision"], rtol=1e-12)
    for c in ("n_pos_pairs", "n_total_pairs"):
        np.testing.assert_array_equal(ours_ap[c], ap[c])
    ours = meanap.map_pvalues(ours_ap, size=null_size, seed=0, nulls=copairs_nulls(cache))
    np.testing.assert_array_equal(ours["perturbation"], m["perturbation"])
    np.testing.assert_allclose(ours["mean_average_precision"], m["mean_average_precision"])
    np.testing.assert_array_equal(ours["p_value"], m["p_value"])
    np.testing.assert_allclose(meanap.bh(ours["p_value"]), m["corrected_p_value"], rtol=1e-12)
    share = np.mean(meanap.bh(ours["p_value"]) < meanap.THRESHOLD)
    assert share == m["below_corrected_p"].mean()
    return ours


def test_activity_equals_copairs(tmp_path):
    wells, X = planted_wells()
    X[3] = X[len(X) - 1]  # a positive tied with a control of another query's plate
    ours_ap = meanap.activity_ap(wells, X)
    ap, m = copairs_activity(wells, X, 2000, tmp_path / "a")
    ap = ap.loc[ap["n_pos_pairs"] > 0]
    ours_ap = ours_ap.set_index("well").loc[ap.index].reset_index()
    ours = check_against_copairs(ours_ap, ap, m, 2000, tmp_path / "b")
    assert ours["mean_average_precision"].iloc[:6].min() > 0.85  # the planted ones
    assert 0 < (meanap.bh(ours["p_value"]) < 0.05).sum() < len(ours)


def planted_map(seed=1, groups=5, size=4, loose=10, dim=24):
    """A map of ``groups`` complexes of ``size`` correlated perturbations plus ``loose``
    unrelated ones; relationships: every member pair ("complex") and the pathways, pairs
    of two complexes each ("pathway")."""
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal((groups, dim))
    M = [centre[g] + 0.5 * rng.standard_normal(dim) for g in range(groups) for _ in range(size)]
    M += list(rng.standard_normal((loose, dim)))
    names = pd.Index([f"G{i:02d}" for i in range(len(M))])
    label = {"complex": [], "pathway": []}
    rel = []
    for i in range(len(M)):
        g = i // size if i < groups * size else None
        label["complex"].append(f"C{g}" if g is not None else f"none{i}")
        label["pathway"].append(f"W{g // 2}" if g is not None else f"none{i}")
    for src, lab in label.items():
        lab = np.array(lab)
        for a in range(len(M)):
            for b in range(a + 1, len(M)):
                if lab[a] == lab[b]:
                    rel.append((src, names[a], names[b]))
    rel = pd.DataFrame(rel, columns=["source", "gene_a", "gene_b"])
    return names, np.array(M), rel, label


def test_consistency_equals_copairs(tmp_path):
    names, M, rel, label = planted_map()
    ours = meanap.consistency_ap(names, M, rel)
    exact = meanap.consistency_ap(names, M, rel, exact=True)
    assert sorted(ours) == ["complex", "pathway"]
    for src, lab in label.items():
        pd.testing.assert_frame_equal(ours[src], exact[src])
        meta = pd.DataFrame({"perturbation": names, "label": lab})
        ap = copairs_map.average_precision(
            meta, M, ["label"], [], [], ["label"], progress_bar=False
        )
        m = copairs_map.mean_average_precision(
            ap, ["perturbation"], 1000, 0.05, seed=0, progress_bar=False, cache_dir=tmp_path / src
        )
        ap = ap.loc[ap["n_pos_pairs"] > 0].sort_values("perturbation")
        o = check_against_copairs(ours[src], ap, m, 1000, tmp_path / f"{src}-ours")
        assert o["mean_average_precision"].mean() > 0.8  # complexes are tight


def test_count_below_matches_brute_force():
    rng = np.random.default_rng(3)
    cos = np.clip(np.round(rng.standard_normal((40, 300)) * 30) / 64, -1, 1)  # many ties
    K = np.float32(1) - cos.astype(np.float32)
    K[rng.random(K.shape) < 0.02] = np.inf
    rows = rng.integers(0, 40, 500)
    cols = rng.integers(0, 300, 500)
    keep = np.isfinite(K[rows, cols])
    rows, cols = rows[keep], cols[keep]
    t = K[rows, cols]  # thresholds that are entries (consistency) ...
    t[:100] = rng.choice([-0.5, 0.0, 3.5], 100).astype(np.float32)  # ... or not (activity)
    brute = [(K[r] < x).sum() for r, x in zip(rows, t, strict=True)]
    np.testing.assert_array_equal(meanap.count_below(K, rows, t), brute)


def test_null_matches_copairs_distribution():
    from copairs.compute import random_ap

    for k, n in ((3, 7), (4, 200)):  # the dense and the sparse sampler
        ours = meanap.null_aps(k, n, 20000, seed=0)
        theirs = random_ap(20000, k, n, seed=1)
        assert abs(ours.mean() - theirs.mean()) < 4 * theirs.std() / np.sqrt(10000)
        q = [0.1, 0.5, 0.9]
        np.testing.assert_allclose(np.quantile(ours, q), np.quantile(theirs, q), atol=0.02)


def test_active_and_noise_perturbations():
    wells, X = planted_wells(seed=5, plates=4, perts=30, controls=16, active=1)
    m = meanap.map_pvalues(meanap.activity_ap(wells, X), size=2000, seed=0)
    m = m.set_index("perturbation")["mean_average_precision"]
    assert m["G00"] > 0.95  # strongly active
    chance = meanap.null_aps(3, 19, 20000, seed=1).mean()  # 3 positives among 3 + 16
    assert abs(m.drop("G00").mean() - chance) < 0.06  # the noise ones: chance
    s = meanap.summary(meanap.activity_ap(wells, X), size=2000)
    assert s["n"] == 30 and s["fraction_significant"] < 0.15


def test_metric_rows_name_every_metric():
    names, M, rel, _ = planted_map()
    wells, X = planted_wells()
    m = meanap.map_scores(wells, X, names, M, rel, size=500)
    rows = meanap.metric_rows(m)
    assert [r[0] for r in rows] == [
        "map_activity",
        "map_activity_fraction_significant",
        "map_consistency_complex",
        "map_consistency_complex_fraction_significant",
        "map_consistency_pathway",
        "map_consistency_pathway_fraction_significant",
    ]
    assert all(0 <= r[1] <= 1 for r in rows)
    assert m["activity"]["perturbations"] == 12 and m["consistency"]["complex"]["queries"] == 20


def test_no_replicates_on_other_plates_gives_no_activity():
    wells, X = planted_wells(plates=1)
    wells = wells[wells["perturbation"] != "G00"]  # the one with two wells on plate 0
    X = X[wells.index]
    assert len(meanap.activity_ap(wells.reset_index(drop=True), X)) == 0
    s = meanap.summary(meanap.activity_ap(wells.reset_index(drop=True), X))
    assert s["n"] == 0 and np.isnan(s["mean_map"])


def test_the_consistency_pass_scans_recalls_null(monkeypatch):
    """Recall's null percentiles from the tiles of mAP's pass equal numpy's on the whole
    null, and recall then makes no pass of its own."""
    names, M, rel, _ = planted_map(groups=40, loose=100)  # 260 rows: 3 tiles
    U = recall.unit_rows(M)
    full = (U.astype(np.float64) @ U.T.astype(np.float64))[np.triu_indices(len(U), 1)]
    scan = recall.null_scan(U, direct=0)
    ours = meanap.consistency_ap(names, M, rel, null=scan)
    assert len(scan.parts) == -(-len(U) // meanap.TILE)  # every row's tile, once
    monkeypatch.setattr(recall, "_scan", lambda *a: pytest.fail("a second pass"))
    got = recall.null_percentiles(U, direct=0, first=scan)
    np.testing.assert_allclose(got, np.percentile(full, [recall.LOW, recall.HIGH]), atol=1e-6)
    for src, ap in meanap.consistency_ap(names, M, rel).items():  # mAP itself is unchanged
        pd.testing.assert_frame_equal(ours[src], ap)
