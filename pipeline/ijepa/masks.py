"""Multi-block masking for I-JEPA (DESIGN.md §4): which patches the context encoder sees and which
patches the predictor must predict.

Owns `MultiBlockMaskCollator` (sampler + DataLoader collate_fn), the `Masks` batch record and
`mask_stats` (numbers for the training logs). Patch indices are row-major on the patch grid.

Per batch: one target block size (scale and aspect drawn from *separate* uniforms) and one context
block size (a block may cover the whole grid). Per image: `num_targets` target blocks (they may overlap
each other; a block may touch the last row/column) and one context block from which every target patch
is removed. The targets are kept; an image whose context is below `min_context` redraws only its context
block a bounded number of times, then falls back (see `_fallback`). `min_context` is a floor, nothing
more: contexts keep every patch they have.

Context lengths differ per image. `context_fill="pad"` (default) pads each image's context to the
batch's longest one and marks the real patches in `Masks.context_valid` (the networks mask padded
tokens out of attention; padding repeats the image's first context patch, so even an unmasked pad
could never show a target patch). `"trim"` cuts every context to the batch's shortest one by keeping a
*seeded random* subset (the original's approach, without its bias).

`official_compat=True` reproduces the three flaws of the original code for comparison (and implies
trimming): positions drawn with an exclusive upper bound and blocks capped at H-1 rows / W-1 columns
(blocks never touch the last row/column), scale and aspect from one shared uniform, and trimming that
keeps the lowest indices (always drops the bottom-right of the image).
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
    """Patch indices of one batch. `context` [B, Nc] (real patches sorted, padding after them);
    `targets` [B, T, Nt] (row-major blocks); `context_valid` [B, Nc] bool, True for real context
    patches (None: all real, as after trimming)."""

    context: torch.Tensor
    targets: torch.Tensor
    context_raw_len: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    fallbacks: int = 0
    context_valid: torch.Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Masks:
        valid = self.context_valid
        return Masks(
            self.context.to(device, non_blocking=non_blocking),
            self.targets.to(device, non_blocking=non_blocking),
            self.context_raw_len,
            self.fallbacks,
            None if valid is None else valid.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Masks:  # lets DataLoader(pin_memory=True) handle the record
        valid = None if self.context_valid is None else self.context_valid.pin_memory()
        return Masks(self.context.pin_memory(), self.targets.pin_memory(), self.context_raw_len, self.fallbacks, valid)

    @property
    def context_lengths(self) -> torch.Tensor:
        """Real context patches per image [B]."""
        if self.context_valid is None:
            return torch.full((self.context.shape[0],), self.context.shape[1], dtype=torch.long)
        return self.context_valid.sum(1)


def mask_stats(masks: Masks, grid: tuple[int, int]) -> dict[str, float]:
    """Flat numbers for the logs: context kept, context before equalising, target coverage, fallbacks."""
    n = grid[0] * grid[1]
    b, t, nt = masks.targets.shape
    covered = torch.zeros(b, n, dtype=torch.bool)
    covered.scatter_(1, masks.targets.reshape(b, t * nt).cpu(), True)
    raw = masks.context_raw_len.float()
    used = masks.context_lengths.float().mean().item()
    stats = {
        "mask/context_len": used,
        "mask/context_padded_len": float(masks.context.shape[1]),
        "mask/context_frac": used / n,
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
        self.pad = params.context_fill == "pad" and not self.compat
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
        # compat: strictly smaller than the grid (when the grid allows), as in the original; ours: up to it
        cap_h = self.height - 1 if self.compat and self.height > 1 else self.height
        cap_w = self.width - 1 if self.compat and self.width > 1 else self.width
        return max(1, min(h, cap_h)), max(1, min(w, cap_w))

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

        The targets stay as drawn. Bounded chain, first that is large enough wins: (1) the whole grid
        minus all targets; (2) the whole grid minus the first k targets, k = T-1 .. 1 (the remaining
        targets leak into the context, like the original's dropping of region constraints); (3) the
        whole grid.
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
        union = targets.any(axis=1)
        ctx = ctx_block & ~union
        for _ in range(MAX_TRIES):  # targets are kept; redraw only the context blocks that are too small
            bad = np.flatnonzero(ctx.reshape(b, hw).sum(1) < self.min_context)
            if bad.size == 0:
                break
            ctx_block[bad] = self._place(rng, (bad.size,), ch, cw)
            ctx[bad] = ctx_block[bad] & ~union[bad]
        bad = np.flatnonzero(ctx.reshape(b, hw).sum(1) < self.min_context)
        for i in bad:
            ctx[i] = self._fallback(ctx_block[i], targets[i])

        ctx = ctx.reshape(b, hw)
        raw_len = ctx.sum(1)
        valid = None
        if self.pad:
            # every context patch of every image, ascending, padded to the longest with the first one
            n_keep = int(raw_len.max())
            order = np.argsort(~ctx, axis=1, kind="stable")[:, :n_keep]
            valid_np = np.arange(n_keep)[None, :] < raw_len[:, None]
            keep = np.where(valid_np, order, order[:, :1])
            valid = torch.from_numpy(valid_np)
        else:
            # trim to the shortest context. Ours: a seeded random subset; compat: the lowest indices
            # (always drops the bottom-right). Non-context patches sort last (score inf).
            n_keep = int(raw_len.min())
            score = np.broadcast_to(np.arange(hw, dtype=np.float64), (b, hw)) if self.compat else rng.random((b, hw))
            score = np.where(ctx, score, np.inf)
            keep = np.sort(np.argsort(score, axis=1, kind="stable")[:, :n_keep], axis=1)

        tgt_idx = np.nonzero(targets.reshape(b * t, hw))[1].reshape(b, t, th * tw)  # row-major per block
        return Masks(
            context=torch.from_numpy(keep.astype(np.int64)),
            targets=torch.from_numpy(tgt_idx.astype(np.int64)),
            context_raw_len=torch.from_numpy(raw_len.astype(np.int64)),
            fallbacks=int(bad.size),
            context_valid=valid,
        )
