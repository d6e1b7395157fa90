"""Low-shot protocol: the linear probe trained on a few labelled images per class.

For each k in `ks` and each seed in `range(seeds)`, exactly k train images per class are drawn
(without replacement, seeded by (seed, k): different seeds give different subsets); optionally a
run on `percent` % of the train labels (class-stratified, at least one image per class; the percentage
is of the full train split even when the cached train features are a subsample of it). Each run
is the logistic regression of `pipeline.eval.linear` on features standardised with the statistics of
the **whole** train split (unsupervised statistics; labels are used only for the sampled images).

Honest model selection: a k-shot result may use only the k labels per class it claims. C is chosen
by stratified cross-validation **inside the sampled subset** (`cv_folds` folds, at most k; the C
grid walked upwards with `patience`, mean held-out top-1, ties to the smaller C), then the subset is
refitted with that C and scored once on test. With one image per class there is nothing to hold
out: C is the smallest of the grid (the strong-regularisation limit, where logistic regression
becomes a nearest-class-mean classifier). Val labels are never read (a test poisons them).
Reported per setting: mean and sample standard deviation (ddof=1; 0 for one seed) of test top-1 over
seeds. Training subsets come only from the train split, and a key-level guard fails the run if a
val or test sample is also a train sample. Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.data.sources import stratified_split
from pipeline.eval.features import FeatureSet
from pipeline.eval.linear import (
    Eigenbasis,
    LinearModel,
    check_disjoint,
    fit_logreg,
    num_classes_of,
    probe_threads,
    standardize,
    topk_accuracy,
)


@dataclass
class LowShotResult:
    """Test top-1 of each seed's run for one setting (`k{k}` or `pct{p}`), with mean and std."""

    setting: str
    runs: list[float] = field(default_factory=list)
    best_c: list[float] = field(default_factory=list)
    train_size: int = 0

    @property
    def mean(self) -> float:
        return float(np.mean(self.runs))

    @property
    def std(self) -> float:
        return float(np.std(self.runs, ddof=1)) if len(self.runs) > 1 else 0.0


def sample_per_class(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Sorted indices of exactly k samples of every class present in `labels` (seeded by (seed, k))."""
    labels = np.asarray(labels)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rng = np.random.default_rng([seed, k])
    picked = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < k:
            raise ValueError(f"class {c} has only {len(members)} train samples, fewer than k={k}")
        picked.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(picked))


def sample_percent(labels: np.ndarray, percent: float, seed: int, base: int | None = None) -> np.ndarray:
    """Sorted indices of `percent` % of `base` samples (default: all of `labels`; e.g. the full train split
    when `labels` is a subsample of it), class-stratified, at least one per class."""
    labels = np.asarray(labels)
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in (0, 100], got {percent}")
    n_classes = len(np.unique(labels))
    n = max(n_classes, round((base or len(labels)) * percent / 100))
    if n >= len(labels):
        return np.arange(len(labels))
    return stratified_split(labels, n, seed)[0]


# Gradient tolerance of the cross-validation fits: measured on the default run's features (k = 5, 10, 25
# and 1 %, 5 seeds, encoder and raw pixels), 1e-3 instead of the solver's 1e-5 was 2.7-3.5x faster and
# moved no mean by more than 0.2 points (it changes a chosen C only between nearly equal neighbours).
CV_TOL = 1e-3


def cv_folds_of(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold id in [0, folds) of every sample: each class's members shuffled (seeded), then dealt
    round-robin, so every fold holds about the same number of each class."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, folds, 7])
    fold = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        fold[members] = np.arange(len(members)) % folds
    return fold


def select_c_cv(
    x: torch.Tensor,
    y: torch.Tensor,
    c_grid: Sequence[float],
    num_classes: int,
    *,
    folds: int = 5,
    seed: int = 0,
    patience: int | None = 1,
    max_iter: int = 300,
    cv_tol: float = CV_TOL,
) -> tuple[LinearModel, dict[float, float]]:
    """C by stratified `folds`-fold cross-validation on (x, y) alone, then a refit on all of it.

    Folds are capped at the smallest class count; with fewer than 2 samples per class there is no
    held-out data and C = min(c_grid). The fold fits stop at gradient tolerance `cv_tol` (they only
    rank the C values), the refit at the solver's default. Returns (the refit, {C: mean held-out top-1})."""
    grid = sorted({float(c) for c in c_grid})
    if not grid:
        raise ValueError("c_grid is empty")
    if not len(y):
        raise ValueError("select_c_cv got no training samples")
    folds = min(folds, int(np.unique(y.numpy(), return_counts=True)[1].min()))
    scores: dict[float, float] = {}
    with probe_threads():
        if folds < 2:
            best_c = grid[0]
        else:
            fold = torch.from_numpy(cv_folds_of(y.numpy(), folds, seed))
            parts = [(fold != f, fold == f) for f in range(folds)]
            bases = [Eigenbasis.of(x[tr]) for tr, _ in parts]
            prev: list[LinearModel | None] = [None] * folds
            best_c, best_acc, stale = grid[0], -1.0, 0
            for c in grid:
                accs = []
                for f, (tr, ho) in enumerate(parts):
                    prev[f] = fit_logreg(x[tr], y[tr], num_classes, c, init=prev[f], basis=bases[f], max_iter=max_iter)
                    accs.append(topk_accuracy(prev[f].logits(x[ho]), y[ho]))  # type: ignore[union-attr]
                scores[c] = float(np.mean(accs))
                if scores[c] > best_acc:
                    best_c, best_acc, stale = c, scores[c], 0
                else:
                    stale += 1
                    if patience is not None and stale >= patience:
                        break
        model = fit_logreg(x, y, num_classes, best_c, max_iter=max_iter)
    return model, scores


def setting_name(k: int | None = None, percent: float | None = None) -> str:
    """`k10` for 10 images per class, `pct1` / `pct0_5` for 1 % / 0.5 % of the labels."""
    if k is not None:
        return f"k{k}"
    return "pct" + f"{percent:g}".replace(".", "_")


def lowshot_eval(
    train: FeatureSet,
    val: FeatureSet,
    test: FeatureSet,
    ks: Sequence[int],
    seeds: int,
    c_grid: Sequence[float],
    *,
    percent: float | None = None,
    percent_base: int | None = None,
    patience: int | None = 1,
    cv_folds: int = 5,
    max_iter: int = 300,
) -> dict[str, LowShotResult]:
    """Run every low-shot setting (module docstring); returns {setting name: LowShotResult}.

    `val` is only checked to share no sample with the training subsets: its labels are never used.
    `percent_base` is the size the percentage refers to (the full train split when `train` holds a
    subsample of it); default `len(train)`."""
    check_disjoint(train, val, test)
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    num_classes = num_classes_of(train, test)
    xtr, xte = standardize(train.features, test.features)
    ytr, yte = torch.from_numpy(train.labels), torch.from_numpy(test.labels)
    plans: list[tuple[str, list[np.ndarray]]] = [
        (setting_name(k=k), [sample_per_class(train.labels, k, s) for s in range(seeds)]) for k in ks
    ]
    if percent is not None:
        plans.append(
            (
                setting_name(percent=percent),
                [sample_percent(train.labels, percent, s, percent_base) for s in range(seeds)],
            )
        )
    results: dict[str, LowShotResult] = {}
    for name, subsets in plans:
        res = LowShotResult(name, train_size=len(subsets[0]))
        for seed, idx in enumerate(subsets):
            sel = torch.from_numpy(idx)
            model, _ = select_c_cv(
                xtr[sel], ytr[sel], c_grid, num_classes, folds=cv_folds, seed=seed, patience=patience, max_iter=max_iter
            )
            res.runs.append(topk_accuracy(model.logits(xte), yte))
            res.best_c.append(model.c)
        results[name] = res
    return results
