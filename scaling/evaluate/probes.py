"""Linear probes on well embeddings and the best-block search (ARCHITECTURE section 4).

A probe is a multinomial logistic regression with an L2 penalty on standardised features
(the scaler is fit on the training wells only), trained on some experiments and tested on
held-out experiments, scored by balanced accuracy (mean per-class recall). The solver is
full-batch L-BFGS in torch on the CPU, started from zero weights, so a probe is
deterministic; the blocks of a model are solved together in batched chunks, to a gradient
tolerance (``TOL``) that leaves balanced accuracies within a well or two of a tighter one.

Splits (:func:`split_experiments`): experiments in sorted order; the last one is the test
experiment, the one before it the validation experiment, the rest train. One fit per
block on the training experiments scores both held-out experiments: the *validation*
balanced accuracy chooses the best block b*, the *test* balanced accuracy is what is
reported, so the number reported at b* was not used to choose b*.

Tasks on the synthetic world (:func:`task_labels`), both on active genes only (inactive
genes have no phenotype, so neither their identity nor their pathway is learnable):
``perturbation`` (which gene; the RxRx1 analogue) and ``pathway`` (which pathway the gene
belongs to; the functional-group analogue). Controls are excluded from both.

Shapes: n wells, D features, B blocks, K classes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from scaling.errors import InputError

L2 = 3e-2  # penalty per training well: loss = mean cross-entropy + L2 / 2 * ||W||^2
MAX_ITER = 500
TOL = 1e-4  # stop when every gradient entry is below this (the loss is a per-well mean)
CHUNK_PARAMS = 2**21  # parameters per L-BFGS solve: blocks are batched up to this many
TASKS = ("perturbation", "pathway")


def balanced_accuracy(y_true, y_pred) -> float:
    """Mean over the classes present in ``y_true`` of the recall (share of that class's
    samples predicted as it). ``y_true``, ``y_pred``: (n,) labels of any comparable type."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise InputError(f"balanced_accuracy: shapes {y_true.shape} and {y_pred.shape} differ")
    if len(y_true) == 0:
        raise InputError("balanced_accuracy: no samples")
    classes, idx = np.unique(y_true, return_inverse=True)
    hits = np.bincount(idx, weights=(y_true == y_pred), minlength=len(classes))
    return float(np.mean(hits / np.bincount(idx, minlength=len(classes))))


def fit_logistic(
    X: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    l2: float = L2,
    max_iter: int = MAX_ITER,
    tol: float = TOL,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression, one independent problem per leading index.

    X (B, n, D) float, y (n,) int64 in [0, K) -> weights W (B, D, K) and biases c (B, K)
    minimising, for each b, ``mean_i CE(softmax(X[b, i] @ W[b] + c[b]), y_i) + l2 / 2 *
    ||W[b]||_F^2`` (bias unpenalised). Full-batch L-BFGS with a strong-Wolfe line search from
    zeros; deterministic. Blocks are solved together, as one sum of objectives that share
    no parameters (so its minimiser is each problem's own), in chunks of at most
    ``CHUNK_PARAMS`` parameters: batching amortises the per-iteration overhead of small
    problems, chunking keeps L-BFGS's history vectors small for large ones. The dtype of X
    is kept (float32 or float64).
    """
    if X.ndim != 3 or y.shape != (X.shape[1],):
        raise InputError(f"fit_logistic: X {tuple(X.shape)} and y {tuple(y.shape)} do not match")
    step = max(1, CHUNK_PARAMS // ((X.shape[2] + 1) * n_classes))
    parts = [
        _lbfgs(X[s : s + step], y, n_classes, l2, max_iter, tol) for s in range(0, len(X), step)
    ]
    return torch.cat([w for w, _ in parts]), torch.cat([c for _, c in parts])


def _lbfgs(X, y, n_classes, l2, max_iter, tol) -> tuple[torch.Tensor, torch.Tensor]:
    """One L-BFGS solve of :func:`fit_logistic`'s objective summed over X's blocks.

    The gradient is written out (``X^T (softmax - onehot) / n + l2 W``, bias: the column
    sums) rather than taken by autograd: the (B, n, K) logits are the only large array and
    are reused in place for the probabilities, a few passes over memory per evaluation
    instead of about ten (the solve is memory-bound when D is small and K large)."""
    b, n, d = X.shape
    W = torch.zeros(b, d, n_classes, dtype=X.dtype)
    c = torch.zeros(b, 1, n_classes, dtype=X.dtype)
    target = y.long().view(1, n, 1).expand(b, n, 1)
    minus_one = torch.full((b, n, 1), -1.0 / n, dtype=X.dtype)
    opt = torch.optim.LBFGS(
        [W, c],
        lr=1,
        max_iter=max_iter,
        tolerance_grad=tol,
        tolerance_change=0.0,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        with torch.no_grad():
            z = torch.baddbmm(c, X, W)  # (b, n, K) logits
            picked = z.gather(2, target).sum()
            top = z.amax(dim=2, keepdim=True)
            total = z.sub_(top).exp_().sum(dim=2, keepdim=True)
            loss = (top.sum() + total.log().sum() - picked) / n + 0.5 * l2 * (W * W).sum()
            z.div_(total * n).scatter_add_(2, target, minus_one)  # (softmax - onehot) / n
            W.grad = torch.baddbmm(W, X.transpose(1, 2), z, beta=l2)
            c.grad = z.sum(dim=1, keepdim=True)
        return loss

    opt.step(closure)
    return W, c[:, 0]


def _as_blocks(X) -> np.ndarray:
    """(n, D) or (B, n, D) array-like, or a list of (n, D) -> (B, n, D) array."""
    X = np.stack([np.asarray(x) for x in X]) if isinstance(X, list | tuple) else np.asarray(X)
    if X.ndim == 2:
        X = X[None]
    if X.ndim != 3 or 0 in X.shape:
        raise InputError(f"probe: embeddings must be (n, D) or (blocks, n, D), got {X.shape}")
    if not np.isfinite(X).all():
        raise InputError("probe: embeddings contain NaN or infinite values")
    return X


def probe_splits(
    X,
    labels: Sequence,
    groups: Sequence,
    eval_groups: Mapping[str, Collection],
    l2: float = L2,
    dtype: torch.dtype = torch.float32,
) -> list[dict]:
    """Train on the wells whose group is in no ``eval_groups`` entry; score each entry.

    X (n, D) or (B, n, D) (or a list of B (n, D)); labels (n,) with None for wells outside
    the task; groups (n,) experiment per well; eval_groups {split name: groups held out for
    it}. Features are standardised with the training wells' mean and sd (ARCHITECTURE
    section 4). Classes absent from the training wells are dropped from the evaluated wells
    (a probe cannot name a class it never saw); the chance level is 1 / n_classes.

    Returns one dict per block: ``{split: balanced_accuracy, f"n_{split}": wells scored,
    "n_train": .., "n_classes": training classes}``.
    """
    X = _as_blocks(X)
    labels, groups = np.asarray(labels, dtype=object), np.asarray(groups, dtype=object)
    if labels.shape != (X.shape[1],) or groups.shape != (X.shape[1],):
        raise InputError(
            f"probe: {X.shape[1]} wells but {len(labels)} labels and {len(groups)} groups"
        )
    in_task = np.array([v is not None and v == v for v in labels])  # None and NaN are out
    eval_groups = {k: [g] if isinstance(g, str) else list(g) for k, g in eval_groups.items()}
    held = np.zeros(len(groups), bool)
    for g in eval_groups.values():
        held |= np.isin(groups, g)
    train = in_task & ~held
    classes = np.unique(labels[train].astype(str))
    if len(classes) < 2:
        raise InputError(
            f"probe: {len(classes)} class(es) in the training experiments (need at least 2)"
        )
    code = {c: i for i, c in enumerate(classes)}
    y = np.array([code.get(str(v), -1) if t else -1 for v, t in zip(labels, in_task, strict=True)])

    Xt = torch.as_tensor(X, dtype=dtype)
    mean = Xt[:, train].mean(dim=1, keepdim=True)
    sd = Xt[:, train].std(dim=1, keepdim=True, unbiased=False)
    sd = torch.where(sd > 1e-6 * (1 + mean.abs()), sd, torch.ones_like(sd))
    Xt = (Xt - mean) / sd
    W, c = fit_logistic(Xt[:, train], torch.as_tensor(y[train]), len(classes), l2=l2)

    out = [{"n_train": int(train.sum()), "n_classes": len(classes)} for _ in range(X.shape[0])]
    for name, g in eval_groups.items():
        rows = np.isin(groups, g) & (y >= 0)
        if not rows.any():
            raise InputError(f"probe: no {name} wells of a class seen in training")
        pred = (torch.baddbmm(c[:, None], Xt[:, rows], W)).argmax(-1).numpy()
        for r, p in zip(out, pred, strict=True):
            r[name] = balanced_accuracy(y[rows], p)
            r[f"n_{name}"] = int(rows.sum())
    return out


def probe(X, labels: Sequence, groups: Sequence, test_groups: Collection, l2: float = L2) -> dict:
    """One linear probe (ARCHITECTURE section 4): X (n, D), labels (n,) (None = not in the
    task), groups (n,) experiments; train on the experiments not in ``test_groups``, test on
    those. Classes absent from training are dropped from the test wells.

    Returns ``{"balanced_accuracy", "n_train", "n_test", "n_classes"}`` (chance is
    1 / n_classes)."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise InputError(f"probe: X must be (n, D), got {X.shape}")
    (r,) = probe_splits(X, labels, groups, {"test": test_groups}, l2=l2)
    return {
        "balanced_accuracy": r["test"],
        "n_train": r["n_train"],
        "n_test": r["n_test"],
        "n_classes": r["n_classes"],
    }


def split_experiments(experiments: Collection[str]) -> dict[str, list[str]]:
    """Deterministic held-out split of experiments (sorted): test = the last, validation =
    the one before it, train = the rest. Needs at least 3 experiments."""
    exps = sorted(set(map(str, experiments)))
    if len(exps) < 3:
        raise InputError(
            f"probe: need at least 3 experiments (train, validation, test), have {len(exps)}"
        )
    return {"train": exps[:-2], "validation": [exps[-2]], "test": [exps[-1]]}


def read_truth(truth) -> pd.DataFrame:
    """The perturbation truth table: a DataFrame, a ``perturbations.parquet`` path, or a
    folder holding one (a dataset's ``truth/``)."""
    if isinstance(truth, pd.DataFrame):
        df = truth
    else:
        p = Path(truth)
        p = p / "perturbations.parquet" if p.is_dir() else p
        try:
            df = pd.read_parquet(p)
        except Exception as e:
            raise InputError(f"{p}: unreadable truth table ({e})") from None
    missing = {"perturbation", "pathway", "active"} - set(df.columns)
    if missing:
        raise InputError(f"truth: perturbations table lacks columns {sorted(missing)}")
    return df


def task_labels(wells: pd.DataFrame, truth) -> dict[str, np.ndarray]:
    """Labels of the probe tasks per well (None = the well is not in the task).

    ``perturbation``: the gene, for wells of active genes. ``pathway``: the gene's pathway,
    for wells of active genes. Controls, inactive genes and perturbations missing from the
    truth table are out of both tasks (ARCHITECTURE sections 3 and 4)."""
    t = read_truth(truth).set_index("perturbation")
    pert = wells["perturbation"].astype(str)
    known = pert.isin(t.index) & ~wells["is_control"].astype(bool)
    active = known & pert.map(t["active"]).fillna(False).astype(bool)
    gene = np.where(active, pert, None)
    pathway = np.where(active, pert.map(t["pathway"]).astype(str), None)
    return {"perturbation": gene.astype(object), "pathway": pathway.astype(object)}


def probe_tasks(wells: pd.DataFrame, X, truth, l2: float = L2) -> dict[str, dict]:
    """Both synthetic-world probe tasks on one set of well embeddings X (n, D).

    Returns ``{task: {"balanced_accuracy" (test), "validation_balanced_accuracy",
    "n_train", "n_validation", "n_test", "n_classes"}}`` with the split of
    :func:`split_experiments`."""
    split = split_experiments(wells["experiment"])
    out = {}
    for task, labels in task_labels(wells, truth).items():
        evals = {"validation": split["validation"], "test": split["test"]}
        (r,) = probe_splits(np.asarray(X)[None], labels, wells["experiment"], evals, l2=l2)
        out[task] = {
            "balanced_accuracy": r["test"],
            "validation_balanced_accuracy": r["validation"],
            "n_train": r["n_train"],
            "n_validation": r["n_validation"],
            "n_test": r["n_test"],
            "n_classes": r["n_classes"],
        }
    return out


def best_block(per_block_scores: Mapping[int, float]) -> int:
    """b* = argmax of the validation balanced accuracy (ARCHITECTURE section 4); ties go to
    the earliest block; NaN scores are ignored."""
    scores = {int(b): float(s) for b, s in per_block_scores.items() if s == s}
    if not scores:
        raise InputError("best_block: no block has a score")
    top = max(scores.values())
    return min(b for b, s in scores.items() if s == top)


def probe_blocks(
    wells: pd.DataFrame,
    X_blocks,
    truth,
    blocks: Sequence[int] | None = None,
    l2: float = L2,
    select_on: str | None = None,
) -> tuple[pd.DataFrame, int]:
    """Probe every block and choose b* (ARCHITECTURE section 4).

    X_blocks: (B, n, D) array, a list of B (n, D) arrays, or a dict {block: (n, D)};
    ``blocks`` labels the blocks (default: the dict's keys, else 1..B as the paper counts).
    Each task is one batched solve over all blocks. b* is the argmax over blocks of the
    validation balanced accuracy, averaged over the tasks (or of task ``select_on``).

    Returns (DataFrame with columns block, task, split ("validation" | "test"),
    balanced_accuracy, n_wells, n_classes; b*).
    """
    if isinstance(X_blocks, Mapping):
        blocks = list(X_blocks) if blocks is None else blocks
        X_blocks = [X_blocks[b] for b in X_blocks]
    X = _as_blocks(X_blocks)
    blocks = list(range(1, X.shape[0] + 1)) if blocks is None else [int(b) for b in blocks]
    if len(blocks) != X.shape[0]:
        raise InputError(f"probe_blocks: {len(blocks)} block labels for {X.shape[0]} blocks")
    if select_on is not None and select_on not in TASKS:
        raise InputError(f"probe_blocks: select_on must be one of {TASKS}, got {select_on!r}")
    split = split_experiments(wells["experiment"])
    evals = {"validation": split["validation"], "test": split["test"]}
    rows = []
    for task, labels in task_labels(wells, truth).items():
        res = probe_splits(X, labels, wells["experiment"], evals, l2=l2)
        for block, r in zip(blocks, res, strict=True):
            rows += [
                dict(
                    block=block,
                    task=task,
                    split=s,
                    balanced_accuracy=r[s],
                    n_wells=r[f"n_{s}"],
                    n_classes=r["n_classes"],
                )
                for s in evals
            ]
    df = pd.DataFrame(rows)
    val = df[df["split"] == "validation"]
    if select_on is not None:
        val = val[val["task"] == select_on]
    return df, best_block(val.groupby("block")["balanced_accuracy"].mean().to_dict())
