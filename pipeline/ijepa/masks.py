"""Multi-block masking for I-JEPA (DESIGN.md §4): which patches the context encoder sees and which
patches the predictor must predict.

Owns `MultiBlockMaskCollator` (sampler + DataLoader collate_fn), the `Masks` batch record and
`mask_stats` (numbers for the training logs). Patch indices are row-major on the patch grid.

Per batch: one target block size (scale and aspect drawn from *separate* uniforms) and one context
block size. Per image: `num_targets` target blocks (they may overlap each other; a block may touch the
last row/column) and one context block from which every target patch is removed. An image whose context
is below `min_context` is redrawn a bounded number of times, then falls back (see `_fallback`). Context
lengths are equalised across the batch by keeping a *seeded random* subset of each image's context.

`official_compat=True` reproduces the three flaws of the original code for comparison: positions drawn
with an exclusive upper bound (blocks never touch the last row/column), scale and aspect from one shared
uniform, and equalisation that keeps the lowest indices (always drops the bottom-right of the image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info

from pipeline.config import MaskParams

MAX_TRIES = 20  # redraws of an image's blocks before falling back


@dataclass
class Masks:
    """Patch indices of one batch. `context` [B, Nc] sorted; `targets` [B, T, Nt] (row-major blocks)."""

    context: torch.Tensor
    targets: torch.Tensor
    context_raw_len: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    fallbacks: int = 0

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Masks:
        return Masks(
            self.context.to(device, non_blocking=non_blocking),
            self.targets.to(device, non_blocking=non_blocking),
            self.context_raw_len,
            self.fallbacks,
        )

    def pin_memory(self) -> Masks:  # lets DataLoader(pin_memory=True) handle the record
        return Masks(self.context.pin_memory(), self.targets.pin_memory(), self.context_raw_len, self.fallbacks)


def mask_stats(masks: Masks, grid: tuple[int, int]) -> dict[str, float]:
    """Flat numbers for the logs: context kept, context before equalising, target coverage, fallbacks."""
    n = grid[0] * grid[1]
    b, t, nt = masks.targets.shape
    covered = torch.zeros(b, n, dtype=torch.bool)
    covered.scatter_(1, masks.targets.reshape(b, t * nt).cpu(), True)
    raw = masks.context_raw_len.float()
    stats = {
        "mask/context_len": float(masks.context.shape[1]),
        "mask/context_frac": masks.context.shape[1] / n,
        "mask/target_len": float(nt),
        "mask/target_union_frac": covered.float().mean().item(),
        "mask/fallbacks": float(masks.fallbacks),
    }
    if raw.numel():
        stats.update({"mask/context_raw_mean": raw.mean().item(), "mask/context_raw_min": raw.min().item()})
    return stats


class MultiBlockMaskCollator:
    """Samples I-JEPA multi-block masks; deterministic in (seed, step).

    As a DataLoader `collate_fn` it default-collates `(image, label)` pairs and returns
    `(images, labels, masks)`. Its step counter is `start_step + local_batch * num_workers + worker_id`,
    which matches the order in which a DataLoader hands out worker batches, so masks do not depend on
    `num_workers`. Workers copy the collator when an iterator is created: call `set_step(global_step)`
    before each epoch's `iter(loader)` (and on resume). Calling `sample(B, step)` from the training loop
    directly is the simplest exact-resume alternative.
    """

    def __init__(self, grid: tuple[int, int], params: MaskParams, seed: int) -> None:
        self.height, self.width = int(grid[0]), int(grid[1])
        self.params = params
        self.seed = int(seed)
        self.compat = params.official_compat
        self.min_context = min(params.min_context, self.height * self.width)
        self._start_step = 0
        self._local = 0

    # ------------------------------------------------------------------ collate_fn
    def set_step(self, step: int) -> None:
        self._start_step, self._local = int(step), 0

    def __call__(self, batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor, Masks]:
        images, labels = default_collate(batch)[:2]
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        step = self._start_step + self._local * nw + wid
        self._local += 1
        return images, labels, self.sample(images.shape[0], step)

    def stats(self, masks: Masks) -> dict[str, float]:
        return mask_stats(masks, (self.height, self.width))

    # ------------------------------------------------------------------ sampling
    def _rng(self, step: int) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, int(step)])))

    def _block_size(
        self, rng: np.random.Generator, scale: tuple[float, float], aspect: tuple[float, float]
    ) -> tuple[int, int]:
        u_scale = rng.random()
        u_aspect = u_scale if self.compat else rng.random()  # compat: one shared uniform
        s = scale[0] + u_scale * (scale[1] - scale[0])
        a = aspect[0] + u_aspect * (aspect[1] - aspect[0])
        keep = max(1, int(self.height * self.width * s))
        h = int(round(math.sqrt(keep * a)))
        w = int(round(math.sqrt(keep / a)))
        # as in the original: strictly smaller than the grid (when the grid allows), at least 1
        h = max(1, min(h, self.height - 1 if self.height > 1 else 1))
        w = max(1, min(w, self.width - 1 if self.width > 1 else 1))
        return h, w

    def _place(self, rng: np.random.Generator, shape: tuple[int, ...], h: int, w: int) -> np.ndarray:
        """Boolean block masks [*shape, H, W] at random top-left positions."""
        # ours: top in [0, H - h] inclusive; compat: exclusive (the original off-by-one)
        span_h = self.height - h + (0 if self.compat else 1)
        span_w = self.width - w + (0 if self.compat else 1)
        top = rng.integers(0, max(span_h, 1), size=shape)
        left = rng.integers(0, max(span_w, 1), size=shape)
        rows = np.arange(self.height)
        cols = np.arange(self.width)
        in_r = (rows >= top[..., None]) & (rows < top[..., None] + h)
        in_c = (cols >= left[..., None]) & (cols < left[..., None] + w)
        return in_r[..., :, None] & in_c[..., None, :]

    def _fallback(self, ctx_block: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Context for one image that stayed below `min_context` after MAX_TRIES redraws.

        Bounded chain, first that is large enough wins: (1) the whole grid minus all targets;
        (2) the whole grid minus the first k targets, k = T-1 .. 1 (the remaining targets leak into the
        context, like the original's dropping of region constraints); (3) the whole grid.
        """
        full = np.ones_like(ctx_block)
        for k in range(targets.shape[0], 0, -1):
            ctx = full & ~targets[:k].any(axis=0)
            if ctx.sum() >= self.min_context:
                return ctx
        return full

    def sample(self, batch_size: int, step: int) -> Masks:
        """Masks for one batch; the same (seed, step) always gives the same masks."""
        p = self.params
        rng = self._rng(step)
        th, tw = self._block_size(rng, p.target_scale, p.target_aspect)
        ch, cw = self._block_size(rng, p.context_scale, p.context_aspect)
        b, t, hw = batch_size, p.num_targets, self.height * self.width

        targets = self._place(rng, (b, t), th, tw)  # [B, T, H, W]
        ctx_block = self._place(rng, (b,), ch, cw)  # [B, H, W]
        ctx = ctx_block & ~targets.any(axis=1)
        for _ in range(MAX_TRIES):  # redraw only the images whose context is too small
            bad = np.flatnonzero(ctx.reshape(b, hw).sum(1) < self.min_context)
            if bad.size == 0:
                break
            targets[bad] = self._place(rng, (bad.size, t), th, tw)
            ctx_block[bad] = self._place(rng, (bad.size,), ch, cw)
            ctx[bad] = ctx_block[bad] & ~targets[bad].any(axis=1)
        bad = np.flatnonzero(ctx.reshape(b, hw).sum(1) < self.min_context)
        for i in bad:
            ctx[i] = self._fallback(ctx_block[i], targets[i])

        ctx = ctx.reshape(b, hw)
        raw_len = ctx.sum(1)
        n_keep = int(raw_len.min())
        # equalise: keep n_keep context patches per image. Ours: a seeded random subset; compat: the
        # lowest indices (always drops the bottom-right). Non-context patches sort last (score inf).
        score = np.broadcast_to(np.arange(hw, dtype=np.float64), (b, hw)) if self.compat else rng.random((b, hw))
        score = np.where(ctx, score, np.inf)
        keep = np.sort(np.argsort(score, axis=1, kind="stable")[:, :n_keep], axis=1)

        tgt_idx = np.nonzero(targets.reshape(b * t, hw))[1].reshape(b, t, th * tw)  # row-major per block
        return Masks(
            context=torch.from_numpy(keep.astype(np.int64)),
            targets=torch.from_numpy(tgt_idx.astype(np.int64)),
            context_raw_len=torch.from_numpy(raw_len.astype(np.int64)),
            fallbacks=int(bad.size),
        )
