"""Low-shot sampling and protocol: exactly k per class, seeds differ, test never trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.eval.features import FeatureSet
from pipeline.eval.lowshot import cv_folds_of, lowshot_eval, sample_per_class, sample_percent, select_c_cv, setting_name
from tests.test_eval_linear import blobs

LABELS = np.repeat(np.arange(4), [30, 40, 50, 60])


def test_exactly_k_per_class_and_seeds_give_different_subsets() -> None:
    for k in (1, 5, 30):
        idx = sample_per_class(LABELS, k, seed=0)
        assert len(np.unique(idx)) == len(idx) == 4 * k
        assert np.bincount(LABELS[idx]).tolist() == [k] * 4
    a, b = sample_per_class(LABELS, 5, seed=0), sample_per_class(LABELS, 5, seed=1)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, sample_per_class(LABELS, 5, seed=0))
    with pytest.raises(ValueError, match="fewer than k"):
        sample_per_class(LABELS, 31, seed=0)


def test_percent_is_stratified() -> None:
    idx = sample_percent(LABELS, 10.0, seed=0)
    assert np.bincount(LABELS[idx]).tolist() == [3, 4, 5, 6]
    assert len(sample_percent(LABELS, 0.1, seed=0)) == 4  # at least one per class
    assert len(sample_percent(LABELS, 10.0, seed=0, base=400)) == 40  # % of the full split, not the subsample
    assert setting_name(percent=1.0) == "pct1" and setting_name(percent=0.5) == "pct0_5"


def test_lowshot_protocol_results() -> None:
    train, val, test = blobs(400), blobs(100, seed=1, prefix="va"), blobs(300, seed=2, prefix="te")
    res = lowshot_eval(train, val, test, [1, 5], seeds=3, c_grid=[0.1, 1.0], percent=5.0)
    assert set(res) == {"k1", "k5", "pct5"}
    assert len(res["k5"].runs) == 3 and res["k5"].train_size == 25 and res["pct5"].train_size == 20
    assert res["k5"].mean > 0.9 and res["k5"].std >= 0.0
    assert len(set(res["k1"].runs)) > 1 or res["k1"].mean == 1.0  # seeds see different subsets


def test_test_images_never_train() -> None:
    train, val = blobs(100), blobs(50, seed=1, prefix="va")
    leaky = blobs(50, seed=2, prefix="tr")  # keys tr0..tr49 are train keys
    with pytest.raises(ValueError, match="also training samples"):
        lowshot_eval(train, val, leaky, [1], seeds=1, c_grid=[1.0])


def test_model_selection_never_reads_val_labels() -> None:
    # poison val: shuffled labels, and labels of classes that do not exist. Selecting C on val would
    # change (or break); the honest protocol selects inside the k-shot subset and gives identical runs.
    train, val, test = blobs(400), blobs(100, seed=1, prefix="va"), blobs(300, seed=2, prefix="te")
    grid = [1e-3, 1e-2, 0.1, 1.0, 10.0]
    clean = lowshot_eval(train, val, test, [1, 5], seeds=2, c_grid=grid, percent=10.0)
    rng = np.random.default_rng(0)
    for labels in (rng.permutation(val.labels), np.full_like(val.labels, 97)):
        poisoned = FeatureSet(val.features, labels, val.keys)
        res = lowshot_eval(train, poisoned, test, [1, 5], seeds=2, c_grid=grid, percent=10.0)
        for name in clean:
            assert res[name].runs == clean[name].runs and res[name].best_c == clean[name].best_c


def test_cv_folds_are_stratified_and_selection_uses_held_out_data() -> None:
    labels = np.repeat(np.arange(3), 10)
    fold = cv_folds_of(labels, 5, seed=0)
    for f in range(5):
        assert np.bincount(labels[fold == f], minlength=3).tolist() == [2, 2, 2]
    assert not np.array_equal(fold, cv_folds_of(labels, 5, seed=1))
    # one sample per class: nothing to hold out, the strongest regularisation of the grid is used
    train = blobs(400)
    idx = sample_per_class(train.labels, 1, seed=0)
    x, y = torch.from_numpy(train.features[idx]), torch.from_numpy(train.labels[idx])
    model, scores = select_c_cv(x, y, [10.0, 0.01, 1.0], int(train.labels.max()) + 1)
    assert model.c == 0.01 and scores == {}
    # held-out accuracy drives the choice: on pure-noise features no C can beat chance by much,
    # on separable blobs the CV score is high
    idx = sample_per_class(train.labels, 10, seed=0)
    x, y = torch.from_numpy(train.features[idx]), torch.from_numpy(train.labels[idx])
    model, scores = select_c_cv(x, y, [0.01, 1.0], int(train.labels.max()) + 1, patience=None)
    assert set(scores) == {0.01, 1.0} and max(scores.values()) > 0.9 and model.c in scores
    noise = torch.from_numpy(np.random.default_rng(3).normal(size=tuple(x.shape)).astype(np.float32))
    _, noise_scores = select_c_cv(noise, y, [0.01, 1.0], int(train.labels.max()) + 1, patience=None)
    assert max(noise_scores.values()) < 0.7
