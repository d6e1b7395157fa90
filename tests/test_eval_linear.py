"""Linear probe: learns separable data, stays at chance on shuffled labels, matches scikit-learn's C."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.eval.features import FeatureSet
from pipeline.eval.linear import (
    check_disjoint,
    fit_logreg,
    linear_probe,
    per_class_accuracy,
    standardize,
    topk_accuracy,
)

GRID = [0.01, 0.1, 1.0, 10.0]


def blobs(n: int, classes: int = 5, dim: int = 16, sep: float = 4.0, seed: int = 0, prefix: str = "tr") -> FeatureSet:
    """Gaussian blobs around random class centres (separable for large `sep`), offset and scaled."""
    fixed = np.random.default_rng(123)  # the same class centres and feature scales in every split
    centres, scales = fixed.normal(0, 1, (classes, dim)) * sep, fixed.uniform(0.1, 10, dim)
    y = np.arange(n) % classes
    x = centres[y] + np.random.default_rng(seed).normal(0, 1, (n, dim))
    x = x * scales + 50.0  # badly scaled: the probe must standardise
    return FeatureSet(x, y, [f"{prefix}{i}" for i in range(n)])


def test_probe_learns_separable_features() -> None:
    res = linear_probe(
        blobs(500), blobs(200, seed=1, prefix="va"), blobs(400, seed=2, prefix="te"), GRID, patience=None
    )
    assert res.test_top1 > 0.97 and res.val_top1 > 0.97
    assert res.test_top5 == 1.0
    assert len(res.per_class) == 5 and min(res.per_class) > 0.9
    assert res.best_c in GRID and set(res.val_by_c) == set(GRID)
    assert res.train_size == 500


def test_c_walk_stops_after_patience_values_without_gain() -> None:
    train, val, test = blobs(300), blobs(100, seed=1, prefix="va"), blobs(100, seed=2, prefix="te")
    grid = [1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0]
    full = linear_probe(train, val, test, grid, patience=None)
    assert list(full.val_by_c) == grid
    vals = [full.val_by_c[c] for c in grid]
    stop = next(i for i in range(1, len(grid)) if vals[i] <= max(vals[:i]))  # first C without a gain
    early = linear_probe(train, val, test, grid, patience=1)
    assert early.val_by_c == {c: full.val_by_c[c] for c in grid[: stop + 1]}  # same warm path, cut short
    assert early.best_c == grid[int(np.argmax(vals[: stop + 1]))]


def test_probe_on_shuffled_labels_is_at_chance() -> None:
    train = blobs(500)
    train.labels = np.random.default_rng(0).permutation(train.labels)
    res = linear_probe(train, blobs(200, seed=1, prefix="va"), blobs(1000, seed=2, prefix="te"), GRID)
    assert abs(res.test_top1 - 0.2) < 0.07


def test_objective_matches_scikit_learn_logistic_regression() -> None:
    from sklearn.linear_model import LogisticRegression

    data = blobs(300, classes=3, dim=6, sep=0.7)
    x, y = standardize(data.features)[0], torch.from_numpy(data.labels)
    for c in (0.05, 1.0):
        ours = fit_logreg(x, y, 3, c, tol=1e-9, max_iter=2000)
        ref = LogisticRegression(C=c, tol=1e-10, max_iter=5000).fit(x.double().numpy(), data.labels)
        # multinomial logits are defined up to a per-row constant: compare centred logits
        ours_logits = ours.logits(x).double()
        ref_logits = torch.from_numpy(ref.decision_function(x.double().numpy()))
        diff = (ours_logits - ours_logits.mean(1, keepdim=True)) - (ref_logits - ref_logits.mean(1, keepdim=True))
        assert diff.abs().max() < 1e-3, c


def test_accuracy_helpers() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0], [0.0, 1.0, 2.0], [5.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    labels = torch.tensor([0, 1, 2, 1])
    assert topk_accuracy(logits, labels, 1) == 0.5
    assert topk_accuracy(logits, labels, 2) == 0.75
    assert topk_accuracy(logits, labels, 5) == 1.0
    acc = per_class_accuracy(logits.argmax(1), labels, 4)
    assert acc[:3] == [1.0, 0.5, 0.0] and np.isnan(acc[3])


def test_leak_guard_and_bad_c() -> None:
    a, b = blobs(10), blobs(10, prefix="te")
    check_disjoint(a, b)
    with pytest.raises(ValueError, match="also training samples"):
        check_disjoint(a, blobs(10, prefix="tr"))
    with pytest.raises(ValueError, match="C must be"):
        fit_logreg(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), 2, 0.0)


def test_weak_regularisation_converges_on_ill_conditioned_features() -> None:
    # labels live in low-variance directions under a dominant irrelevant 8-d component: plain L-BFGS
    # needs 229 / 353 iterations for C = 1e2 / 1e4 here (warm-started); the preconditioned one < 30
    rng = np.random.default_rng(0)
    n = 2000
    latent, mixing = rng.normal(0, 1, (n, 8)), rng.normal(0, 1, (8, 64))
    signal = rng.normal(0, 1, (n, 4))
    y = torch.from_numpy(np.argmax(signal + rng.normal(0, 0.3, (n, 4)), axis=1))
    noise = rng.normal(0, 0.005, (n, 64))
    x = standardize(latent @ mixing + 0.05 * signal @ rng.normal(0, 1, (4, 64)) + noise)[0]
    prev = None
    for c in (0.01, 1.0, 100.0, 10000.0):
        prev = fit_logreg(x, y, 4, c, init=prev, max_iter=400)
        assert prev.iterations < 100, (c, prev.iterations)
    assert topk_accuracy(prev.logits(x), y) > 0.8


def test_fewer_samples_than_dimensions_uses_the_span_of_the_rows() -> None:
    from sklearn.linear_model import LogisticRegression

    from pipeline.eval.linear import Eigenbasis

    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(0, 1, (12, 40)).astype(np.float32))
    x[:, :5] = 0.0  # constant (standardised) columns: null directions
    y = torch.arange(12) % 3
    basis = Eigenbasis.of(x)
    assert basis.u.shape == (40, 12) and basis.xr.shape == (12, 12)
    torch.testing.assert_close(basis.u.T @ basis.u, torch.eye(12), atol=1e-4, rtol=0)
    ours = fit_logreg(x, y, 3, 0.5, tol=1e-9, max_iter=2000)
    ref = LogisticRegression(C=0.5, tol=1e-10, max_iter=5000).fit(x.double().numpy(), y.numpy())
    torch.testing.assert_close(
        ours.weight.T.double(), torch.from_numpy(ref.coef_) - torch.from_numpy(ref.coef_).mean(0), atol=2e-3, rtol=0
    )
