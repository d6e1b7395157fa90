"""The training objective's parts: the JEPA regression loss, the target normalisations across the batch
(`train.target_norm`) and VICReg's variance/covariance anti-collapse terms (`train.var_weight/cov_weight`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def jepa_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "smooth_l1") -> torch.Tensor:
    """Mean smooth-L1 (original code) or mean squared error (paper) over all target patches and blocks."""
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target)
    if kind == "l2":
        return F.mse_loss(pred, target)
    raise ValueError(f"unknown loss {kind!r}: expected 'smooth_l1' or 'l2'")


def batch_standardize(t: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Zero mean, unit std of every (position, dimension) of [B, N, D] across the batch, in fp32.

    What every image shares at a position (its position signature, a constant) is removed from the
    target, so it can only be predicted from image content; every dimension weighs the same, so no
    single direction can carry the loss (a remedy for the dimensional collapse the layer-normed
    targets allow: there the predictor can score ~99 % from positions alone)."""
    x = t.float()
    mean = x.mean(0, keepdim=True)
    std = x.var(0, keepdim=True, unbiased=False).add(eps).sqrt()
    return ((x - mean) / std).to(t.dtype)


def batch_whiten(t: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """[B, N, D] centred per position across the batch, then ZCA-whitened with the covariance of all
    B*N centred tokens (eigenvalues floored at `eps` x their mean), in fp64 for the decomposition.

    Per-dimension standardisation leaves correlated dimensions correlated: a target whose variance
    lies in one direction (on Fashion-MNIST: the amount of ink) stays one-dimensional. Whitened
    targets have unit variance in every direction (W-MSE, Ermolov et al. 2021), so no direction can
    carry the loss alone and the predictor has to predict all of them."""
    x = t.double()
    x = x - x.mean(0, keepdim=True)
    flat = x.reshape(-1, x.shape[-1])
    cov = flat.T @ flat / max(flat.shape[0] - 1, 1)
    lam, vec = torch.linalg.eigh(cov)
    lam = lam.clamp_min(eps * lam.mean().clamp_min(1e-12))
    w = vec @ torch.diag(lam.rsqrt()) @ vec.T
    return (x @ w).to(t.dtype)


def masked_mean(z: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean over the real tokens of [B, N, D] (`valid` [B, N] bool; None = all) -> [B, D]."""
    if valid is None:
        return z.mean(1)
    w = valid.to(z.dtype).unsqueeze(-1)
    return (z * w).sum(1) / w.sum(1).clamp_min(1.0)


def variance_covariance(
    feats: torch.Tensor, target_std: float = 1.0, eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """VICReg's anti-collapse terms on [B, D] features (Bardes et al. 2022; added to I-JEPA by C-JEPA,
    Mo & Tong 2024): mean hinge `relu(target_std - std_d)` over dimensions, and the sum of squared
    off-diagonal covariances divided by D. Computed in fp32."""
    x = feats.float()
    x = x - x.mean(0)
    std = torch.sqrt(x.var(0) + eps)
    var = F.relu(target_std - std).mean()
    n, d = x.shape
    cov = (x.T @ x) / max(n - 1, 1)
    off = cov - torch.diag(torch.diagonal(cov))
    return var, (off * off).sum() / d
