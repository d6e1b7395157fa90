"""Linear-probe protocol: multinomial logistic regression on frozen, standardised features.

Protocol (DESIGN.md §4, I-JEPA appendix, scaled down):
1. features are standardised with the mean/std of the **train** features (unsupervised statistics);
2. for every C of the grid (ascending, i.e. strong → weak regularisation, each fit warm-started
   from the previous one) a classifier is fitted on **train** and scored on **val**;
3. the C with the best val top-1 is kept (ties → the smallest C). The reported classifier is that
   train-only fit: there is **no refit on train+val**, so val top-1 stays an honest model-selection
   score and test is touched exactly once;
4. report val top-1 (for sweeps / model selection), test top-1, test top-5 and per-class test top-1.

Solver: full-batch L-BFGS in torch (strong-Wolfe line search) on the objective of scikit-learn's
`LogisticRegression(C)`: mean cross-entropy + ||W||² / (2·C·N), intercept not penalised, so C means the
same as in scikit-learn. Chosen over scikit-learn's lbfgs after measuring both on 55k×128 features:
same accuracy, several times faster (bench/eval.md). All accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.eval.features import FeatureSet


@dataclass
class LinearModel:
    """Weights [D, K] and bias [K] of a fitted multinomial logistic regression."""

    weight: torch.Tensor
    bias: torch.Tensor
    c: float
    iterations: int = 0

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


@dataclass
class ProbeResult:
    """Outcome of `linear_probe` (accuracies are fractions in [0, 1])."""

    best_c: float
    val_top1: float
    test_top1: float
    test_top5: float
    per_class: list[float]
    val_by_c: dict[float, float] = field(default_factory=dict)
    train_size: int = 0
    fit_s: float = 0.0

    @property
    def best_c_at_edge(self) -> bool:
        grid = sorted(self.val_by_c)
        return len(grid) > 1 and self.best_c in (grid[0], grid[-1])


def standardize(train: np.ndarray, *others: np.ndarray, eps: float = 1e-6) -> list[torch.Tensor]:
    """Float32 tensors of `train` and `others`, standardised with the mean/std of `train`."""
    tensors = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in (train, *others)]
    mean, std = tensors[0].mean(0), tensors[0].std(0, unbiased=False).clamp_min(eps)
    return [(t - mean) / std for t in tensors]


def fit_logreg(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    c: float,
    *,
    init: LinearModel | None = None,
    max_iter: int = 500,
    tol: float = 1e-5,
) -> LinearModel:
    """Minimise mean CE + ||W||²/(2·C·N) with full-batch L-BFGS (sklearn's LogisticRegression objective)."""
    if c <= 0:
        raise ValueError(f"C must be > 0, got {c}")
    n, d = x.shape
    w = (init.weight.clone() if init is not None else torch.zeros(d, num_classes)).requires_grad_(True)
    b = (init.bias.clone() if init is not None else torch.zeros(num_classes)).requires_grad_(True)
    lam = 1.0 / (c * n)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=tol, tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + 0.5 * lam * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    iters = opt.state[opt._params[0]].get("n_iter", 0)
    return LinearModel(w.detach(), b.detach(), c, iters)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Fraction of rows whose label is among the k highest logits (k capped at the class count)."""
    k = min(k, logits.shape[1])
    hit = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return float(hit.float().mean())


def per_class_accuracy(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Top-1 accuracy of each class (NaN for a class absent from `labels`)."""
    out = []
    for c in range(num_classes):
        m = labels == c
        out.append(float((pred[m] == c).float().mean()) if m.any() else float("nan"))
    return out


def select_c(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    c_grid: Sequence[float],
    num_classes: int,
    *,
    max_iter: int = 500,
) -> tuple[LinearModel, dict[float, float]]:
    """Fit on train for each C (ascending, warm-started), score val top-1; return the best fit and
    {C: val top-1}. Ties go to the smaller C (stronger regularisation)."""
    if not c_grid:
        raise ValueError("c_grid is empty")
    best: LinearModel | None = None
    best_acc = -1.0
    scores: dict[float, float] = {}
    prev: LinearModel | None = None
    for c in sorted(set(float(c) for c in c_grid)):
        prev = fit_logreg(x_train, y_train, num_classes, c, init=prev, max_iter=max_iter)
        scores[c] = topk_accuracy(prev.logits(x_val), y_val)
        if scores[c] > best_acc:
            best, best_acc = prev, scores[c]
    assert best is not None
    return best, scores


def check_disjoint(train: FeatureSet, *others: FeatureSet) -> None:
    """Raise if any sample key of `train` also appears in an evaluation set (leak guard)."""
    train_keys = set(train.keys.tolist())
    for other in others:
        shared = train_keys.intersection(other.keys.tolist())
        if shared:
            raise ValueError(f"{len(shared)} evaluation samples are also training samples, e.g. {sorted(shared)[:3]}")


def num_classes_of(*sets: FeatureSet) -> int:
    return int(max(int(s.labels.max()) for s in sets if len(s))) + 1


def linear_probe(
    train: FeatureSet,
    val: FeatureSet,
    test: FeatureSet,
    c_grid: Sequence[float],
    *,
    num_classes: int | None = None,
    max_iter: int = 500,
) -> ProbeResult:
    """The full linear protocol (module docstring) on one feature set's train/val/test splits."""
    check_disjoint(train, val, test)
    start = time.perf_counter()
    k = num_classes or num_classes_of(train, val, test)
    xtr, xva, xte = standardize(train.features, val.features, test.features)
    ytr, yva, yte = (torch.from_numpy(s.labels) for s in (train, val, test))
    model, scores = select_c(xtr, ytr, xva, yva, c_grid, k, max_iter=max_iter)
    logits = model.logits(xte)
    return ProbeResult(
        best_c=model.c,
        val_top1=scores[model.c],
        test_top1=topk_accuracy(logits, yte, 1),
        test_top5=topk_accuracy(logits, yte, 5),
        per_class=per_class_accuracy(logits.argmax(1), yte, k),
        val_by_c=scores,
        train_size=len(train),
        fit_s=time.perf_counter() - start,
    )
