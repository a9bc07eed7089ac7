"""TVN, aggregation, recall, replicate consistency and the embeddings table, each against an
independent brute-force version of ARCHITECTURE section 4 written differently here."""

import dataclasses
import itertools
import json
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.linalg
from scipy import stats

from scaling.errors import InputError
from scaling.evaluate import consistency, recall
from scaling.evaluate.consistency import perturbation_pvalues, replicate_consistency
from scaling.evaluate.recall import aggregate, null_percentiles, relationship_recall, unit_rows
from scaling.evaluate.table import read_embeddings, write_embeddings
from scaling.evaluate.tvn import tvn
from tests.conftest import run_cli

# ---------------------------------------------------------------- TVN


def brute_ledoit_wolf(C):
    """Ledoit & Wolf (2004), their formulas with a loop over samples: S* = (1 - rho) S +
    rho mu I, rho = min(b2, d2) / d2, with |A|^2 = tr(A A.T) / D."""
    n, d = C.shape
    C = C - C.mean(axis=0)
    S = sum(np.outer(x, x) for x in C) / n
    mu = np.trace(S) / d
    d2 = np.trace((S - mu * np.eye(d)) @ (S - mu * np.eye(d)).T) / d
    b2 = sum(np.trace((np.outer(x, x) - S) @ (np.outer(x, x) - S).T) / d for x in C) / n**2
    rho = min(b2, d2) / d2
    return (1 - rho) * S + rho * mu * np.eye(d)


def textbook_tvn(X, ctrl, batch, center, shrink=False, fit=None):
    """Section 4 step by step with loops and textbook formulas (SVD PCA, scipy sqrtm);
    ``shrink``: brute-force Ledoit-Wolf covariances; ``fit``: the wells the steps are fitted
    on (default the controls). Returned in the scaled features' axes (step 1)."""
    X = np.array(X, dtype=np.float64)
    n, d = X.shape
    fit = ctrl if fit is None else fit

    def scaler(A):
        mu = np.array([sum(A[:, j]) / len(A) for j in range(A.shape[1])])
        sd = np.array([np.sqrt(sum((A[:, j] - mu[j]) ** 2) / len(A)) for j in range(A.shape[1])])
        sd[sd <= 1e-6 * sd.max()] = 1.0
        return mu, sd

    mu, sd = scaler(X[fit])
    Z = (X - mu) / sd
    C = Z[fit] - Z[fit].mean(axis=0)
    _, _, Vt = np.linalg.svd(C, full_matrices=False)  # rows: principal axes
    Z = (Z - Z[fit].mean(axis=0)) @ Vt.T
    if shrink:  # the shrunk variance along each principal axis
        sd = np.sqrt(np.diag(Vt @ brute_ledoit_wolf(C) @ Vt.T))
    else:
        mu, sd = scaler(Z[fit])
    Z = Z / sd
    out = np.zeros_like(Z)
    for b in np.unique(batch):
        rows = np.flatnonzero(batch == b)
        cb = Z[rows[fit[rows]]]
        m = cb.mean(axis=0)
        if shrink:
            cov = brute_ledoit_wolf(cb) * len(cb) / (len(cb) - 1)
        else:
            cov = sum(np.outer(x - m, x - m) for x in cb) / (len(cb) - 1)
        W = np.linalg.inv(np.real(scipy.linalg.sqrtm(cov + 0.5 * np.eye(d))))
        for r in rows:
            out[r] = ((Z[r] - m) if center else Z[r]) @ W
    return out @ Vt


def batchy(rng, n=240, d=6, batches=3):
    """Wells with per-batch offsets and gains, a constant feature, 40% controls."""
    batch = rng.integers(0, batches, n)
    ctrl = rng.random(n) < 0.4
    X = rng.standard_normal((n, d)) @ rng.standard_normal((d, d))
    X += np.where(ctrl[:, None], 0.0, rng.standard_normal((n, d)))  # perturbation signal
    X = X * (1 + batch[:, None]) + 3.0 * batch[:, None]  # batch gain and offset
    X[:, 2] = 7.0  # a dead feature: zero variance
    return X.astype(np.float32), ctrl, np.array([f"EXP{b}" for b in batch])


@pytest.mark.parametrize("center", [True, False])
def test_tvn_matches_textbook_steps(center):
    """shrink=False, folds=0 is EFAAR's TVN exactly."""
    rng = np.random.default_rng(0)
    X, ctrl, batch = batchy(rng)
    ours = tvn(X, ctrl, batch, center=center, shrink=False, folds=0)
    ref = textbook_tvn(X, ctrl, batch, center)
    assert ours.dtype == np.float32 and ours.shape == X.shape
    # PCA axes are defined up to sign (and rotation in ties): compare what cosines see
    np.testing.assert_allclose(ours @ ours.T, ref @ ref.T, rtol=1e-4, atol=1e-3)


def test_tvn_default_is_shrunk_and_cross_fitted_textbook_tvn():
    """Ledoit-Wolf covariances; controls corrected by the fit on the other fold of their
    batch (folds by position), every other well by the fit on all controls. The fits land
    in the same axes, so rows of different fits are compared directly."""
    rng = np.random.default_rng(3)
    X, ctrl, batch = batchy(rng, n=200, d=8)
    ours = tvn(X, ctrl, batch)
    ref = textbook_tvn(X, ctrl, batch, True, shrink=True)
    fold = np.zeros(len(X), dtype=int)
    for b in np.unique(batch):
        rows = np.flatnonzero(ctrl & (batch == b))
        fold[rows] = np.arange(len(rows)) % 2
    for k in (0, 1):
        part = textbook_tvn(X, ctrl, batch, True, shrink=True, fit=ctrl & (fold != k))
        ref[ctrl & (fold == k)] = part[ctrl & (fold == k)]
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
    assert not np.allclose(ours, tvn(X, ctrl, batch, folds=0), atol=1e-3)  # controls moved
    in_sample = tvn(X, ctrl, batch, folds=0)
    np.testing.assert_allclose(ours[~ctrl], in_sample[~ctrl], rtol=1e-5, atol=1e-5)


def test_tvn_whitens_each_batch_of_controls():
    rng = np.random.default_rng(1)
    X, ctrl, batch = batchy(rng, n=600, d=5)
    X[:, 2] += rng.standard_normal(600).astype(np.float32)  # all features alive
    Y = tvn(X, ctrl, batch, folds=0).astype(np.float64)
    for b in np.unique(batch):
        c = Y[(batch == b) & ctrl]
        assert np.abs(c.mean(axis=0)).max() < 1e-4  # centred on the batch's controls
        # Cov after = C (C + 0.5 I)^-1 with C the batch's covariance before: eigenvalues < 1
        ev = np.linalg.eigvalsh(np.cov(c, rowvar=False))
        assert ev.max() < 1 and ev.min() > 0


def genome_like(controls_per_plate, wells_per_plate, genes, dim, strength, seed):
    """An embeddings-only planted world (scaling.world.genome), 4 experiments."""
    from scaling.world.biology import make_biology
    from scaling.world.genome import genome_embeddings
    from scaling.world.layout import make_layout
    from scaling.world.presets import WorldSpec

    spec = WorldSpec(
        genes=genes,
        experiments=4,
        wells_per_plate=wells_per_plate,
        controls_per_plate=controls_per_plate,
        strength=strength,
        images=False,
    )
    bio = make_biology(spec, seed)
    wells, X = genome_embeddings(spec, bio, make_layout(spec, bio, seed), seed, dim=dim)
    return bio, wells, X


def tvn_scores(bio, wells, Y):
    names, M = aggregate(wells, Y)
    r = relationship_recall(names, M, bio.relationships_table())
    return r["complex"], replicate_consistency(wells, Y, seed=0)["fraction_significant"]


@pytest.mark.parametrize("seed", [0, 1])
def test_tvn_with_few_controls_keeps_them_a_null_and_the_signal(seed):
    """16 controls per experiment in 95 dimensions (the tiny world's hand-crafted
    features). Without phenotypes, EFAAR's TVN calls a third or more of the perturbations
    consistent at p < 0.01 (whitened in-sample, the controls are no null); ours about the
    nominal 1%. With phenotypes, ours recalls more complex pairs than EFAAR's."""
    ctrl_of = lambda w: (w["is_control"].to_numpy(), w["experiment"].to_numpy())  # noqa: E731
    bio, wells, X = genome_like(8, 32, 48, 95, strength=0.0, seed=seed)
    ours = tvn_scores(bio, wells, tvn(X, *ctrl_of(wells)))
    efaar = tvn_scores(bio, wells, tvn(X, *ctrl_of(wells), shrink=False, folds=0))
    assert ours[1] <= 0.05 and efaar[1] >= 0.25
    bio, wells, X = genome_like(8, 32, 48, 95, strength=1.0, seed=seed)
    ours = tvn_scores(bio, wells, tvn(X, *ctrl_of(wells)))
    efaar = tvn_scores(bio, wells, tvn(X, *ctrl_of(wells), shrink=False, folds=0))
    assert ours[0] > efaar[0] + 0.03


def test_tvn_with_many_controls_is_efaar_tvn():
    """160 controls per experiment in 64 dimensions: the shrinkage has almost nothing to
    shrink and the controls' fold fits almost equal the whole fit: recall and the share
    consistent agree with EFAAR's TVN."""
    bio, wells, X = genome_like(20, 96, 600, 64, strength=1.0, seed=0)
    ctrl, exp = wells["is_control"].to_numpy(), wells["experiment"].to_numpy()
    ours = tvn_scores(bio, wells, tvn(X, ctrl, exp))
    efaar = tvn_scores(bio, wells, tvn(X, ctrl, exp, shrink=False, folds=0))
    assert abs(ours[0] - efaar[0]) <= 0.01 and abs(ours[1] - efaar[1]) <= 0.03


def test_tvn_needs_controls_in_every_batch():
    X = np.random.default_rng(0).standard_normal((20, 3))
    ctrl = np.array([True] * 10 + [False] * 9 + [True])
    batch = np.array(["A"] * 10 + ["B"] * 10)
    with pytest.raises(ValueError, match="'B' has 1 control"):
        tvn(X, ctrl, batch)


# ---------------------------------------------------------------- aggregation and recall


def test_aggregate_means_wells_and_drops_controls():
    wells = pd.DataFrame(
        {
            "perturbation": ["b", "NTC", "a", "b", "a", "c", "NTC"],
            "is_control": [False, True, False, False, False, False, True],
        }
    )
    X = np.arange(14, dtype=np.float32).reshape(7, 2)
    names, M = aggregate(wells, X)
    assert list(names) == ["a", "b", "c"]
    np.testing.assert_allclose(M, [(X[2] + X[4]) / 2, (X[0] + X[3]) / 2, X[5]])


def brute_recall(names, M, rel):
    """Loops over every pair, np.percentile, sets of frozensets."""
    names = list(names)
    cos = {}
    for i, j in itertools.combinations(range(len(names)), 2):
        a, b = M[i].astype(np.float64), M[j].astype(np.float64)
        cos[frozenset((names[i], names[j]))] = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    lo, hi = np.percentile(list(cos.values()), [5, 95])
    out = {}
    for src, g in rel.groupby("source"):
        q = {frozenset((a, b)) for a, b in zip(g.gene_a, g.gene_b, strict=True)}
        q = [cos[k] for k in q if len(k) == 2 and k <= set(names)]
        if q:
            out[src] = float(np.mean([(c <= lo) or (c >= hi) for c in q]))
    return out


def planted_map(rng, P=150, D=8):
    names = [f"G{i:03d}" for i in range(P)]
    group = rng.integers(0, 20, P)
    M = rng.standard_normal((20, D))[group] + 0.8 * rng.standard_normal((P, D))
    rows = []
    for src, k in (("complex", 60), ("random", 80)):
        for _ in range(k):
            i = rng.integers(P)
            same = np.flatnonzero(group == group[i]) if src == "complex" else np.arange(P)
            rows.append((src, names[i], names[rng.choice(same)]))
    rows += [("complex", "G001", "G001"), ("complex", "G002", "NOPE"), ("empty", "X", "Y")]
    rows += [("complex", b, a) for _, a, b in rows[:10]]  # reversed duplicates
    return names, M, pd.DataFrame(rows, columns=["source", "gene_a", "gene_b"])


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"direct": 0}, {"direct": 0, "sample": 8}, {"direct": 0, "z": 0.01, "tile": 64}],
    ids=["direct", "bracketed", "tiny-sample", "narrow-brackets"],
)
def test_recall_matches_brute_force(kwargs):
    names, M, rel = planted_map(np.random.default_rng(2))
    ours = relationship_recall(names, M, rel, **kwargs)
    ref = brute_recall(names, M, rel)
    assert ours == pytest.approx(ref, abs=1e-12) and set(ours) == {"complex", "random"}
    assert ours["complex"] > 0.3 > ours["random"]


@pytest.mark.parametrize("direct", [recall.DIRECT, 0])
def test_recall_counts_ties_at_the_percentiles(direct):
    # 20 genes on one axis, 20 on another: the null is 380 ones and 400 zeros, so its 5th
    # percentile is exactly 0 and a pair across the axes (cosine 0) sits on it: it counts
    names = [f"G{i:02d}" for i in range(40)]
    M = np.repeat(np.eye(2), 20, axis=0)
    rel = pd.DataFrame({"source": "s", "gene_a": names[:5], "gene_b": names[20:25]})
    assert relationship_recall(names, M, rel, direct=direct) == {"s": 1.0}


def test_null_percentiles_are_numpy_percentiles_on_every_path(monkeypatch):
    U = unit_rows(np.random.default_rng(3).standard_normal((301, 5)))
    full = (U.astype(np.float64) @ U.T.astype(np.float64))[np.triu_indices(301, 1)]
    q = [0, 5, 37.3, 95, 100]
    ref = np.percentile(full, q)
    scans = []
    scan = recall._scan
    monkeypatch.setattr(recall, "_scan", lambda *a: scans.append(1) or scan(*a))
    for kw in (
        {},
        {"tile": 100},
        {"direct": 0},
        {"direct": 0, "tile": 100},
        {"z": 1e-3, "direct": 0},
    ):
        scans.clear()
        np.testing.assert_allclose(null_percentiles(U, q, **kw), ref, atol=1e-6)
        if kw.get("z"):
            assert len(scans) >= 2  # brackets missed, were widened, and the answer is still exact


def test_random_map_recall_is_chance():
    rng = np.random.default_rng(4)
    P = 2500
    names = [f"G{i}" for i in range(P)]
    pairs = rng.integers(0, P, (20000, 2))
    rel = pd.DataFrame({"source": "random", "gene_a": pairs[:, 0], "gene_b": pairs[:, 1]})
    rel[["gene_a", "gene_b"]] = rel[["gene_a", "gene_b"]].map(lambda i: f"G{i}")
    r = relationship_recall(names, rng.standard_normal((P, 32)), rel, direct=0)["random"]
    assert 0.09 < r < 0.11
    assert abs(recall.CHANCE - 0.10) < 1e-12


# ---------------------------------------------------------------- replicate consistency


def replicate_world(rng, genes=40, exps=3, D=6):
    """Wells with 0-2 wells per (gene, experiment), a few consistent genes, controls."""
    rows, X = [], []
    signal = rng.standard_normal((genes, D)) * (np.arange(genes) < 10)[:, None] * 3
    for e in range(exps):
        for g in range(genes):
            for _ in range(rng.integers(0, 3) if g % 7 else 1 if e == 0 else 0):
                rows.append((f"E{e}", f"G{g:02d}", False))
                X.append(signal[g] + rng.standard_normal(D))
        for _ in range(25):
            rows.append((f"E{e}", "NTC", True))
            X.append(rng.standard_normal(D))
    wells = pd.DataFrame(rows, columns=["experiment", "perturbation", "is_control"])
    return wells, np.array(X, dtype=np.float32)


def cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_consistency_matches_brute_force():
    rng = np.random.default_rng(5)
    wells, X = replicate_world(rng)
    X64 = X.astype(np.float64)
    w = wells.to_dict("records")
    matched = [
        cosine(X64[i], X64[j])
        for i, j in itertools.combinations(range(len(w)), 2)
        if not w[i]["is_control"]
        and w[i]["perturbation"] == w[j]["perturbation"]
        and w[i]["experiment"] != w[j]["experiment"]
    ]
    u, v = consistency.null_pairs(wells, len(matched), np.random.default_rng([0, 1]))
    assert len(u) == len(matched)
    for i, j in zip(u, v, strict=True):  # the null's pairs obey its definition
        assert not w[i]["is_control"] and not w[j]["is_control"]
        assert w[i]["perturbation"] != w[j]["perturbation"]
        assert w[i]["experiment"] != w[j]["experiment"]
    null = [cosine(X64[i], X64[j]) for i, j in zip(u, v, strict=True)]
    ours = replicate_consistency(wells, X, seed=0)
    assert ours["ks"] == pytest.approx(stats.ks_2samp(matched, null).statistic, abs=1e-9)
    cvm = stats.cramervonmises_2samp(matched, null).statistic
    assert ours["cvm"] == pytest.approx(cvm, rel=1e-6)
    assert ours["ks"] > 0.2  # ten genes are consistent
    p = perturbation_pvalues(wells, X)["p_value"]
    assert ours["fraction_significant"] == pytest.approx(np.mean(p.dropna() < 0.01))


def test_pvalues_follow_their_formula():
    rng = np.random.default_rng(6)
    wells, X = replicate_world(rng)
    X64 = X.astype(np.float64)
    table, nulls = consistency._pvalues(wells, unit_rows(X), seed=0, n_null=200)
    w = wells.to_dict("records")

    def score(members):  # mean cosine over cross-experiment pairs, by loops
        c = [
            cosine(X64[i], X64[j])
            for i, j in itertools.combinations(members, 2)
            if w[i]["experiment"] != w[j]["experiment"]
        ]
        return np.mean(c) if c else np.nan

    by_gene = wells[~wells.is_control].groupby("perturbation")
    for row in table.itertuples():
        members = by_gene.groups[row.perturbation]
        exps = wells.experiment.iloc[members]
        assert row.n_wells == len(members) and row.n_experiments == exps.nunique()
        np.testing.assert_allclose(row.score, score(members), atol=1e-5)
        if exps.nunique() < 2:
            assert np.isnan(row.score) and np.isnan(row.p_value)
    seen = 0
    for codes, sets in nulls:
        assert sets.shape[0] == 200
        null = np.array([score(s) for s in sets])
        for s in sets:
            assert len(set(s)) == len(s) and wells.is_control.iloc[s].all()
        for c in codes:
            want = sorted(wells.experiment.iloc[by_gene.groups[table.perturbation[c]]])
            assert sorted(wells.experiment.iloc[sets[0]]) == want  # same wells per experiment
            s_c = table.score[c]
            p = (np.sum(null >= s_c - 1e-9) + 1) / (len(null) + 1)
            assert table.p_value[c] == pytest.approx(p)
            seen += 1
    assert seen == table.p_value.notna().sum() > 20
    # the ten planted genes (all in 2+ experiments) beat the control null
    planted = table[table.perturbation.isin([f"G{g:02d}" for g in range(1, 10) if g % 7])]
    assert (planted.p_value.dropna() < 0.01).mean() > 0.7


def test_pvalue_counts_null_scores_equal_to_the_score():
    # exact arithmetic: unit axis vectors. Controls: E0 {e1, e1}, E1 {e1, e2}; the gene's
    # wells e1 (E0), e1 (E1) score 1; half the control sets score 1 too (>= counts them)
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    wells = pd.DataFrame(
        {
            "experiment": ["E0", "E0", "E1", "E1", "E0", "E1"],
            "perturbation": ["NTC"] * 4 + ["G"] * 2,
            "is_control": [True] * 4 + [False] * 2,
        }
    )
    X = np.array([e1, e1, e1, e2, e1, e1], dtype=np.float32)
    table, [(_, sets)] = consistency._pvalues(wells, unit_rows(X), seed=0, n_null=400)
    ties = int(sum(X[a] @ X[b] == 1.0 for a, b in sets))
    assert 150 < ties < 250 and table.score[0] == 1.0
    assert table.p_value[0] == pytest.approx((ties + 1) / 401)


# ---------------------------------------------------------------- the embeddings table and CLI


def some_wells(n=12, d=4, seed=0):
    rng = np.random.default_rng(seed)
    wells = pd.DataFrame(
        {
            "experiment": [f"E{i % 2}" for i in range(n)],
            "plate": [f"P{i % 3}" for i in range(n)],
            "well": [f"A{i:02d}" for i in range(n)],
            "perturbation": ["NTC" if i % 4 == 0 else f"G{i % 5}" for i in range(n)],
            "is_control": [i % 4 == 0 for i in range(n)],
        }
    )
    return wells, rng.standard_normal((n, d)).astype(np.float32)


def test_table_round_trip(tmp_path):
    wells, X = some_wells()
    path = tmp_path / "e.parquet"
    write_embeddings(path, wells, X, extra_columns={"block": np.arange(12), "b2": 2 * X})
    assert [p.name for p in tmp_path.iterdir()] == ["e.parquet"]  # no temporary left
    schema = pq.read_schema(path)
    assert schema.field("features").type == pa.list_(pa.float32(), 4)
    got, Y = read_embeddings(path)
    assert Y.dtype == np.float32 and np.array_equal(X, Y)
    pd.testing.assert_frame_equal(got[list(wells)], wells, check_dtype=False)
    assert list(got["block"]) == list(range(12))
    np.testing.assert_array_equal(read_embeddings(path, column="b2")[1], 2 * X)
    # another lab's file: list<double>, integer plates, 0/1 controls
    other = tmp_path / "other.parquet"
    pq.write_table(
        pa.table(
            {
                "experiment": wells.experiment,
                "plate": np.arange(12),
                "well": wells.well,
                "perturbation": wells.perturbation,
                "is_control": wells.is_control.astype(int),
                "features": pa.array(X.astype(np.float64).tolist(), pa.list_(pa.float64())),
            }
        ),
        other,
    )
    got, Y = read_embeddings(other)
    assert np.allclose(X, Y) and got.plate[3] == "3" and got.is_control.dtype == bool


def bad_tables(X):
    n = len(X)
    base = dict(
        experiment=["E"] * n, plate=["P"] * n, well=list("ABCDEFGHIJKL")[:n], perturbation=["G"] * n
    )
    ok = dict(base, is_control=[False] * n, features=pa.array(X.tolist(), pa.list_(pa.float32())))
    ragged = X.tolist()
    ragged[3] = ragged[3][:2]
    inf = X.copy()
    inf[5, 1] = np.inf
    return {
        "missing column(s) well": {k: v for k, v in ok.items() if k != "well"},
        "list of numbers": dict(ok, features=[str(r) for r in X.tolist()]),
        "different lengths": dict(ok, features=ragged),
        "non-finite values (row 5": dict(ok, features=inf.tolist()),
        "'is_control' must be boolean": dict(ok, is_control=["yes"] * n),
        "null in row 2": dict(ok, features=[*X.tolist()[:2], None, *X.tolist()[3:]]),
    }


@pytest.mark.parametrize("case", list(bad_tables(np.zeros((12, 4)))))
def test_table_errors_name_the_file(tmp_path, case):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table(bad_tables(some_wells()[1])[case]), path)
    with pytest.raises(InputError, match=re.escape(case)) as e:
        read_embeddings(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_table_missing_and_foreign_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_embeddings(tmp_path / "none.parquet")
    (tmp_path / "x.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        read_embeddings(tmp_path / "x.parquet")


def test_benchmark_cli_contract_and_bad_input(tmp_path):
    from scaling.world.biology import make_biology
    from scaling.world.genome import genome_embeddings
    from scaling.world.layout import make_layout
    from scaling.world.presets import PRESETS

    spec = dataclasses.replace(PRESETS["genome"], genes=400, wells_per_plate=96)
    bio = make_biology(spec, 0)
    wells, X = genome_embeddings(spec, bio, make_layout(spec, bio, 0), 0)
    write_embeddings(tmp_path / "e.parquet", wells, X)
    truth = tmp_path / "truth"
    truth.mkdir()
    bio.perturbations_table().to_parquet(truth / "perturbations.parquet")
    bio.relationships_table().to_parquet(truth / "relationships.parquet")
    out = tmp_path / "res" / "b.json"
    rc, stdout, err = run_cli(
        "benchmark", "--embeddings", tmp_path / "e.parquet", "--truth", truth, "--out", out
    )
    assert rc == 0, err
    r = json.loads(out.read_text())
    assert set(r["recall"]) == {"complex", "pathway"} and r["n_perturbations"] == 400
    assert set(r["consistency"]) == {"ks", "cvm", "fraction_significant"}
    assert all(isinstance(v, float) for v in [*r["recall"].values(), *r["consistency"].values()])
    assert r["recall"]["complex"] > 0.25 and "recall" in stdout
    assert set(r["map"]["consistency"]) == {"complex", "pathway"} and "mAP" in stdout
    assert 0 < r["map"]["activity"]["mean_map"] < 1 and r["map"]["activity"]["perturbations"] == 400
    # bad input: exit 2, one line naming the file at fault
    (truth / "relationships.parquet").unlink()
    rc, _, err = run_cli(
        "benchmark", "--embeddings", tmp_path / "e.parquet", "--truth", truth, "--out", out
    )
    assert rc == 2 and err.count("\n") == 1 and "relationships.parquet: no such file" in err


def test_one_blas_thread_restores_the_thread_count():
    from scaling.evaluate import tvn as module

    blas = module._openblas()
    if blas is None:
        pytest.skip("numpy's bundled OpenBLAS not found")
    get, _ = blas
    before = get()
    with module.one_blas_thread():
        assert get() == 1
    assert get() == before
