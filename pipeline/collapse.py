"""Collapse measures of a feature matrix: is the representation using its dimensions?

A JEPA can lower its loss by predicting what is the same for every image (positions, a constant)
instead of content; the features then look fine to a standardising linear probe and are useless
to everything else. These numbers say so directly, on the pooled features the probes use:

- `effective_rank`: exp of the Shannon entropy of the normalised **variance spectrum** (the squared
  singular values, i.e. the PCA eigenvalues) of the centred features: 1 for rank-1 data, D for
  isotropic. This is the scale of the project's references: raw Fashion-MNIST pixels 28.9, the
  collapsed encoder of 2026-11 1.3 (94 % of its variance in one direction).
- `rankme`: the same entropy over the singular values themselves (RankMe, Garrido et al. 2023; Roy &
  Vetterli 2007). Far more lenient to a dominant direction: 4.8 for that collapsed encoder, 411 for
  raw pixels. Reported beside it; the gate uses `effective_rank`.
- `common_share`: the share of the feature energy that is the same for every image,
  ||mean||^2 / mean(||x||^2), in [0, 1] (1: every row identical).
- `dim_std`: per-dimension standard deviation (its mean, min and the fraction of dead dimensions).

Used by the training monitor (pooled target features of a logged batch) and by the evaluation
reports (cached features of every set), so both compute the same number.
"""

from __future__ import annotations

import numpy as np
import torch

DEAD_STD = 1e-4  # a dimension whose std across images is below this (relative to the mean std) is dead


def _as_tensor(feats: torch.Tensor | np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(feats)
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D [samples, dims] matrix, got shape {tuple(x.shape)}")
    return x.detach().to("cpu", torch.float64)


def _spectral_entropy_rank(spectrum: torch.Tensor) -> float:
    total = spectrum.sum()
    if total <= 0:
        return 0.0
    p = spectrum / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def _singular_values(feats: torch.Tensor | np.ndarray) -> torch.Tensor | None:
    x = _as_tensor(feats)
    return None if x.shape[0] < 2 else torch.linalg.svdvals(x - x.mean(0))


def effective_rank(feats: torch.Tensor | np.ndarray) -> float:
    """exp(entropy) of the normalised variance spectrum (squared singular values) of the centred
    features [M, D]; 0 for fewer than 2 rows or constant features."""
    s = _singular_values(feats)
    return 0.0 if s is None else _spectral_entropy_rank(s * s)


def rankme(feats: torch.Tensor | np.ndarray) -> float:
    """RankMe: exp(entropy) of the normalised singular values of the centred features [M, D]."""
    s = _singular_values(feats)
    return 0.0 if s is None else _spectral_entropy_rank(s)


def common_share(feats: torch.Tensor | np.ndarray) -> float:
    """||mean row||^2 / mean(||row||^2): the fraction of feature energy shared by every sample."""
    x = _as_tensor(feats)
    energy = float((x * x).sum(1).mean())
    if energy <= 0:
        return 1.0
    return float((x.mean(0) ** 2).sum()) / energy


def collapse_stats(feats: torch.Tensor | np.ndarray) -> dict[str, float]:
    """All collapse measures of one feature matrix, as flat keys (report and monitor share them)."""
    x = _as_tensor(feats)
    std = x.std(0, unbiased=False) if x.shape[0] > 1 else torch.zeros(x.shape[1], dtype=x.dtype)
    mean_std = float(std.mean())
    dead = float((std <= DEAD_STD * max(mean_std, 1e-300)).double().mean()) if mean_std > 0 else 1.0
    return {
        "effective_rank": round(effective_rank(x), 4),
        "rankme": round(rankme(x), 4),
        "common_share": round(common_share(x), 4),
        "dim_std_mean": round(mean_std, 6),
        "dim_std_min": round(float(std.min()), 6),
        "dead_dim_fraction": round(dead, 4),
    }
