"""Weighted k-nearest-neighbour protocol on frozen features (as in DINO, Caron et al. 2021).

Features are centred with the **train** mean (on by default, as DINO-style evaluations do: without it
the component every image shares dominates the cosine similarity of collapsed features) and then
L2-normalised; each test sample takes its k most cosine-similar train samples, each
voting for its label with weight exp(sim / T); the class with the largest summed weight wins.
Several k are evaluated from one top-max(k) search, computed in chunks of test rows so memory stays
bounded (chunk × N_train similarities). Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.eval.features import FeatureSet


def knn_predict(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    ks: Sequence[int],
    *,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
    center: bool = True,
) -> dict[int, torch.Tensor]:
    """Predicted labels of `test_x` for each k in `ks` ({k: int64 [N_test]}); k is capped at N_train.
    `center`: subtract the mean of `train_x` from both sides before normalising."""
    if not ks:
        raise ValueError("ks is empty")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    k_classes = num_classes or int(train_y.max()) + 1
    train_x, test_x = train_x.float(), test_x.float()
    if center:
        mean = train_x.mean(0, keepdim=True)
        train_x, test_x = train_x - mean, test_x - mean
    train_n = F.normalize(train_x, dim=1)
    test_n = F.normalize(test_x, dim=1)
    kmax = min(max(ks), len(train_n))
    preds: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, len(test_n), chunk):
        sim, idx = (test_n[start : start + chunk] @ train_n.T).topk(kmax, dim=1)  # sorted, descending
        weights = (sim / temperature).exp()
        onehot = F.one_hot(train_y[idx], k_classes).float()  # [B, kmax, C]
        for k in ks:
            kk = min(k, kmax)
            votes = (onehot[:, :kk] * weights[:, :kk, None]).sum(dim=1)
            preds[k].append(votes.argmax(dim=1))
    return {k: torch.cat(v) for k, v in preds.items()}


def knn_accuracy(
    train: FeatureSet,
    test: FeatureSet,
    ks: Sequence[int],
    *,
    temperature: float = 0.07,
    chunk: int = 1024,
    center: bool = True,
) -> dict[int, float]:
    """Top-1 accuracy of the weighted kNN classifier for each k ({k: fraction})."""
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    preds = knn_predict(
        torch.from_numpy(train.features), torch.from_numpy(train.labels), torch.from_numpy(test.features), ks,
        temperature=temperature, num_classes=num_classes, chunk=chunk, center=center,
    )  # fmt: skip
    labels = torch.from_numpy(np.asarray(test.labels))
    return {k: float((p == labels).float().mean()) for k, p in preds.items()}
