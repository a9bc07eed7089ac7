import numpy as np
import pandas as pd
import pytest
import torch

from scaling.errors import InputError
from scaling.evaluate.probes import (
    balanced_accuracy,
    best_block,
    fit_logistic,
    probe,
    probe_blocks,
    probe_splits,
    probe_tasks,
    split_experiments,
    task_labels,
)


def test_balanced_accuracy_is_mean_per_class_recall():
    rng = np.random.default_rng(0)
    y = rng.choice(["a", "b", "c", "d"], size=300, p=[0.6, 0.25, 0.1, 0.05])
    pred = np.where(rng.random(300) < 0.6, y, rng.choice(["a", "b", "c", "d", "e"], 300))
    recalls = []
    for k in sorted(set(y)):
        members = [i for i in range(len(y)) if y[i] == k]
        recalls.append(sum(pred[i] == k for i in members) / len(members))
    assert balanced_accuracy(y, pred) == pytest.approx(sum(recalls) / len(recalls))
    # on imbalanced classes it is not plain accuracy: always guessing the majority class
    y = np.array([0] * 90 + [1] * 10)
    assert np.mean(y == 0) == pytest.approx(0.9)
    assert balanced_accuracy(y, np.zeros(100, int)) == pytest.approx(0.5)
    with pytest.raises(InputError):
        balanced_accuracy([1, 2], [1])


def _numpy_gradient(X, y, W, c, l2):
    """The penalised multinomial loss's gradient, written out in numpy (not autograd)."""
    z = X @ W + c
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    return X.T @ p / len(y) + l2 * W, p.mean(0)


def test_logistic_regression_reaches_the_penalised_optimum():
    rng = np.random.default_rng(1)
    B, n, D, K, l2 = 3, 120, 7, 4, 0.05
    y = rng.integers(0, K, n)
    X = rng.standard_normal((B, n, D)) + 0.8 * rng.standard_normal((K, D))[y]
    W, c = fit_logistic(torch.tensor(X), torch.tensor(y), K, l2=l2, tol=1e-9, max_iter=2000)
    assert W.dtype == torch.float64 and W.shape == (B, D, K) and c.shape == (B, K)
    for b in range(B):
        gW, gc = _numpy_gradient(X[b], y, W[b].numpy(), c[b].numpy(), l2)
        assert np.abs(gW).max() < 1e-7 and np.abs(gc).max() < 1e-7
        # each block's solution is its own: solving it alone gives the same weights
        Wb, _ = fit_logistic(torch.tensor(X[b : b + 1]), torch.tensor(y), K, l2=l2, tol=1e-9)
        assert torch.allclose(Wb[0], W[b], atol=1e-6)
    # a solution that is not optimal fails the same check
    gW, _ = _numpy_gradient(X[0], y, 1.01 * W[0].numpy(), c[0].numpy(), l2)
    assert np.abs(gW).max() > 1e-5
    # deterministic: bit-identical on a second run
    W2, c2 = fit_logistic(torch.tensor(X), torch.tensor(y), K, l2=l2, tol=1e-9, max_iter=2000)
    assert torch.equal(W, W2) and torch.equal(c, c2)


def _planted(seed=0, classes=8, per_class=20, experiments=4, D=16, sep=4.0, shift=1.5):
    """Gaussian classes far apart, every experiment shifted by its own large offset."""
    rng = np.random.default_rng(seed)
    means = sep * rng.standard_normal((classes, D))
    X, labels, groups = [], [], []
    for e in range(experiments):
        offset = shift * rng.standard_normal(D)
        y = np.repeat(np.arange(classes), per_class)
        X.append(means[y] + offset + rng.standard_normal((len(y), D)))
        labels += [f"k{k}" for k in y]
        groups += [f"E{e}"] * len(y)
    return np.concatenate(X).astype(np.float32), np.array(labels, object), np.array(groups)


def test_probe_separates_planted_classes_and_not_noise():
    X, labels, groups = _planted()
    r = probe(X, labels, groups, test_groups=["E3"])
    assert r["balanced_accuracy"] > 0.95
    assert (r["n_train"], r["n_test"], r["n_classes"]) == (480, 160, 8)
    noise = np.random.default_rng(2).permutation(labels)
    r = probe(X, noise, groups, test_groups=["E3"])
    assert abs(r["balanced_accuracy"] - 1 / 8) < 0.1
    # a class seen only in the test experiment is dropped from the test wells
    lab = labels.copy()
    lab[(groups == "E3") & (labels == "k0")] = "only-in-test"
    r = probe(X, lab, groups, test_groups=["E3"])
    assert r["n_test"] == 140 and r["n_classes"] == 8 and r["balanced_accuracy"] > 0.95
    # wells labelled None are outside the task
    lab = labels.copy()
    lab[:100] = None
    assert probe(X, lab, groups, test_groups=["E3"])["n_train"] == 380


def test_probe_rejects_bad_input():
    X, labels, groups = _planted(classes=3, per_class=3)
    with pytest.raises(InputError, match="class"):
        probe(X, np.array(["a"] * len(X), object), groups, ["E3"])
    with pytest.raises(InputError, match="wells"):
        probe(X[:-1], labels, groups, ["E3"])
    with pytest.raises(InputError, match="test"):
        probe(X, labels, groups, ["E9"])
    X[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        probe(X, labels, groups, ["E3"])
    with pytest.raises(InputError, match="3 experiments"):
        split_experiments(["E1", "E2", "E1"])
    assert split_experiments(["E3", "E1", "E4", "E2"]) == {
        "train": ["E1", "E2"],
        "validation": ["E3"],
        "test": ["E4"],
    }


def _world(seed=0, genes=40, experiments=4, controls=6, pathways=4):
    """A wells table and truth: half the genes active, genes in pathways, controls per
    experiment; every gene once per experiment."""
    rng = np.random.default_rng(seed)
    names = [f"G{i:03d}" for i in range(genes)]
    truth = pd.DataFrame(
        {
            "perturbation": names,
            "complex": [f"C{i // 4}" for i in range(genes)],
            "pathway": [f"P{i % pathways}" for i in range(genes)],
            "active": rng.permutation(np.arange(genes) % 2 == 0),
        }
    )
    rows = []
    for e in range(experiments):
        perts = [(g, False) for g in names] + [("NTC", True)] * controls
        rows += [
            dict(experiment=f"EXP{e + 1:02d}", plate=f"EXP{e + 1:02d}-P01", well=f"W{i:03d}")
            | dict(perturbation=p, is_control=c)
            for i, (p, c) in enumerate(perts)
        ]
    return pd.DataFrame(rows), truth


def test_task_labels_keep_active_genes_only():
    wells, truth = _world()
    labels = task_labels(wells, truth)
    active = set(truth.loc[truth["active"], "perturbation"])
    gene = labels["perturbation"]
    assert {g for g in gene if g is not None} == active
    assert all(g is None for g, c in zip(gene, wells["is_control"], strict=True) if c)
    pathway_of = dict(zip(truth["perturbation"], truth["pathway"], strict=True))
    assert all(
        (p is None) == (g is None) and (g is None or p == pathway_of[g])
        for g, p in zip(gene, labels["pathway"], strict=True)
    )


def test_best_block_finds_the_planted_block():
    wells, truth = _world(genes=60)
    rng = np.random.default_rng(3)
    D = 24
    code = {g: rng.standard_normal(D) for g in truth["perturbation"]} | {"NTC": np.zeros(D)}
    pathway = {p: rng.standard_normal(D) for p in truth["pathway"].unique()}
    pw = dict(zip(truth["perturbation"], truth["pathway"], strict=True))
    signal = np.stack([code[p] + (pathway[pw[p]] if p in pw else 0) for p in wells["perturbation"]])
    shift = wells["experiment"].map({e: rng.standard_normal() for e in wells["experiment"]})
    strength = [0.0, 0.3, 0.6, 3.0, 0.6, 0.3]  # block 4 (1-based) carries the signal
    X = np.stack(
        [
            s * signal + shift.to_numpy()[:, None] + rng.standard_normal(signal.shape)
            for s in strength
        ]
    ).astype(np.float32)
    df, best = probe_blocks(wells, X, truth)
    assert best == 4
    assert set(df.columns) >= {"block", "task", "split", "balanced_accuracy"}
    assert len(df) == len(strength) * 2 * 2  # blocks x tasks x {validation, test}
    test = df[(df["split"] == "test") & (df["task"] == "perturbation")].set_index("block")
    assert test.loc[4, "balanced_accuracy"] > 0.9 > test.loc[1, "balanced_accuracy"]
    assert (df["n_classes"][df["task"] == "perturbation"] == 30).all()
    # block labels from a dict; the same numbers, block by block
    df2, best2 = probe_blocks(wells, {10 + b: X[b] for b in range(len(X))}, truth)
    assert best2 == 13
    assert np.allclose(df2["balanced_accuracy"], df["balanced_accuracy"])
    # one set of embeddings: both tasks, test and validation numbers
    r = probe_tasks(wells, X[3], truth)
    assert set(r) == {"perturbation", "pathway"}
    assert r["perturbation"]["balanced_accuracy"] == test.loc[4, "balanced_accuracy"]
    assert r["pathway"]["n_classes"] == 4 and r["perturbation"]["n_test"] == 30


def test_best_block_ties_and_nan():
    assert best_block({3: 0.5, 1: 0.2, 2: 0.5, 7: float("nan")}) == 2
    assert best_block({5: 0.1}) == 5
    with pytest.raises(InputError):
        best_block({1: float("nan")})


def test_batched_blocks_match_one_at_a_time():
    X, labels, groups = _planted(D=8, sep=1.0)
    Xb = np.stack([X, 0.5 * X + np.random.default_rng(4).standard_normal(X.shape)])
    evals = {"validation": ["E2"], "test": ["E3"]}
    together = probe_splits(Xb, labels, groups, evals, dtype=torch.float64)
    alone = [probe_splits(x, labels, groups, evals, dtype=torch.float64)[0] for x in Xb]
    assert together == alone


def test_held_out_wells_do_not_touch_the_fit():
    """The scaler and the model see only the training experiments: changing the test
    experiment's embeddings leaves the validation score as it was."""
    X, labels, groups = _planted(D=8, sep=0.7)
    evals = {"validation": ["E2"], "test": ["E3"]}
    (r,) = probe_splits(X, labels, groups, evals)
    assert 0.3 < r["validation"] < 0.9  # a probe that is neither at chance nor perfect
    X2 = X.copy()
    X2[groups == "E3"] = 100 * X2[groups == "E3"] + 50
    (r2,) = probe_splits(X2, labels, groups, evals)
    assert r2["validation"] == r["validation"] and r2["test"] != r["test"]
