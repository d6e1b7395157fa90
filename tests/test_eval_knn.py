"""Weighted kNN: nearest neighbours by cosine similarity, exp(sim / T) votes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.eval.features import FeatureSet
from pipeline.eval.knn import knn_accuracy, knn_predict


def unit(deg: float, r: float = 1.0) -> list[float]:
    return [r * np.cos(np.radians(deg)), r * np.sin(np.radians(deg))]


def test_nearest_neighbour_by_cosine_not_euclidean() -> None:
    # the query (at 0 deg) is nearer in Euclidean distance to the class-1 point at 30 deg, but its
    # direction matches the far class-0 point at 2 deg: cosine similarity must pick class 0
    train_x = torch.tensor([unit(2, r=10.0), unit(30, r=1.0), unit(180), unit(90)])
    train_y = torch.tensor([0, 1, 2, 3])
    pred = knn_predict(train_x, train_y, torch.tensor([unit(0)]), [1], center=False)
    assert pred[1].tolist() == [0]


def test_exponential_weights_depend_on_temperature() -> None:
    # one very close class-0 neighbour against two further class-1 neighbours
    train_x = torch.tensor([unit(1), unit(40), unit(-40), unit(180)])
    train_y = torch.tensor([0, 1, 1, 2])
    query = torch.tensor([unit(0)])
    assert knn_predict(train_x, train_y, query, [3], temperature=0.05, center=False)[3].tolist() == [0]  # weight wins
    assert knn_predict(train_x, train_y, query, [3], temperature=100.0, center=False)[3].tolist() == [
        1
    ]  # ~majority vote
    assert knn_predict(train_x, train_y, query, [1], temperature=100.0, center=False)[1].tolist() == [0]


def test_accuracy_on_clusters_several_k_and_chunks() -> None:
    rng = np.random.default_rng(0)
    angles = {0: 0.0, 1: 120.0, 2: 240.0}

    def make(n: int, prefix: str) -> FeatureSet:
        y = np.arange(n) % 3
        x = np.array([unit(angles[c] + rng.normal(0, 15)) for c in y]) * rng.uniform(0.5, 3, (n, 1))
        return FeatureSet(x, y, [f"{prefix}{i}" for i in range(n)])

    train, test = make(90, "tr"), make(50, "te")
    acc = knn_accuracy(train, test, [1, 5, 20, 500], chunk=7, center=False)  # k > N_train is capped
    assert set(acc) == {1, 5, 20, 500}
    assert all(a > 0.95 for a in acc.values())
    shuffled = FeatureSet(train.features, rng.permutation(train.labels), train.keys)
    assert knn_accuracy(shuffled, test, [20], center=False)[20] < 0.7
    with pytest.raises(ValueError):
        knn_predict(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), torch.zeros(1, 2), [])


def test_centring_removes_the_component_every_sample_shares() -> None:
    # a large offset shared by every image (what a collapsed encoder emits) plus class signals in the
    # plane of the offset direction u and a direction v: classes at 0/90/180/270 degrees. Cosine
    # similarity of uncentred features cannot see the u component (every row points along u), so
    # the 0 and 180 degree classes merge; centred kNN separates all four.
    rng = np.random.default_rng(1)
    u, v = np.zeros(8), np.zeros(8)
    u[0], v[1] = 1.0, 1.0

    def make(n: int, prefix: str) -> FeatureSet:
        y = np.arange(n) % 4
        theta = np.radians(90.0 * y)[:, None]
        x = 10.0 * u + 0.5 * (np.cos(theta) * u + np.sin(theta) * v) + rng.normal(0, 0.02, (n, 8))
        return FeatureSet(x, y, [f"{prefix}{i}" for i in range(n)])

    train, test = make(200, "tr"), make(200, "te")
    assert knn_accuracy(train, test, [10])[10] > 0.95
    assert knn_accuracy(train, test, [10], center=False)[10] < 0.85
