"""Low-shot protocol: the linear probe trained on a few labelled images per class.

For each k in `ks` and each seed in `range(seeds)`, exactly k train images per class are drawn
(without replacement, seeded by (seed, k): different seeds give different subsets); optionally a
run on `percent` % of the train labels (class-stratified, at least one image per class; the percentage
is of the full train split even when the cached train features are a subsample of it). Each run
is the linear protocol of `pipeline.eval.linear`: features standardised with the statistics of the
**whole** train split (unsupervised statistics; labels are used only for the sampled images), C
selected on the full val split, the chosen train-subset fit scored once on test. Reported per
setting: mean and sample standard deviation (ddof=1; 0 for one seed) of test top-1 over seeds.
Training subsets come only from the train split, and a key-level guard fails the run if a val or
test sample is also a train sample. Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.data.sources import stratified_split
from pipeline.eval.features import FeatureSet
from pipeline.eval.linear import check_disjoint, num_classes_of, select_c, standardize, topk_accuracy


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
    max_iter: int = 300,
) -> dict[str, LowShotResult]:
    """Run every low-shot setting (module docstring); returns {setting name: LowShotResult}.

    `percent_base` is the size the percentage refers to (the full train split when `train` holds a
    subsample of it); default `len(train)`."""
    check_disjoint(train, val, test)
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    num_classes = num_classes_of(train, val, test)
    xtr, xva, xte = standardize(train.features, val.features, test.features)
    ytr, yva, yte = (torch.from_numpy(s.labels) for s in (train, val, test))
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
        for idx in subsets:
            sel = torch.from_numpy(idx)
            model, _ = select_c(xtr[sel], ytr[sel], xva, yva, c_grid, num_classes, patience=patience, max_iter=max_iter)
            res.runs.append(topk_accuracy(model.logits(xte), yte))
            res.best_c.append(model.c)
        results[name] = res
    return results
