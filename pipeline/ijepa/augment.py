"""Batch-level input pipeline of pretraining: random resized crop, resize and normalisation.

Runs in the training process on whole batches (not in loader workers), with a `torch.Generator`
seeded from `(seed, step, rank)`, so the augmentation of every step is reproducible and a resumed
run sees exactly the crops an uninterrupted one would. Crops are resampled to the model's input
side with `torchvision.ops.roi_align` (bilinear, averaged sub-samples), one call per batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torchvision.ops import roi_align

RATIO = (3.0 / 4.0, 4.0 / 3.0)


def step_generator(seed: int, step: int, rank: int = 0, stream: int = 0) -> torch.Generator:
    """A CPU generator whose state depends only on (seed, step, rank, stream)."""
    state = np.random.SeedSequence([seed, step, rank, stream]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: Sequence[float],
    generator: torch.Generator,
    ratio: Sequence[float] = RATIO,
) -> torch.Tensor:
    """`n` random-resized-crop boxes `(x0, y0, x1, y1)` in pixels (area fraction in `scale`, aspect
    ratio log-uniform in `ratio`), clamped to the image; vectorised, no rejection loop."""
    u = torch.rand(n, 4, generator=generator, dtype=torch.float64)
    area = (scale[0] + (scale[1] - scale[0]) * u[:, 0]) * height * width
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).clamp(1.0, width)
    h = torch.sqrt(area / aspect).clamp(1.0, height)
    x0 = (width - w) * u[:, 2]
    y0 = (height - h) * u[:, 3]
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def resample(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop `boxes` (one per image) out of `images` [B,C,H,W] and resample each to `size`×`size`."""
    idx = torch.arange(images.shape[0], dtype=boxes.dtype).unsqueeze(1)
    rois = torch.cat([idx, boxes], dim=1).to(images.dtype)
    return roi_align(images, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)


class BatchTransform:
    """Images in [0,1] → (optionally cropped) resized to `size` → normalised by `mean`/`std`."""

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        scale: Sequence[float] | None,
        seed: int,
        rank: int = 0,
    ) -> None:
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"bad normalization mean={list(mean)} std={list(std)}")
        self.size, self.scale, self.seed, self.rank = size, scale, seed, rank
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor, step: int) -> torch.Tensor:
        """Transform one batch for update `step`, on the batch's device (boxes are always drawn on the
        CPU, so the crops depend only on (seed, step, rank), not on the device)."""
        b, c, h, w = images.shape
        if c != self.mean.shape[1]:
            raise ValueError(f"images have {c} channels but the normalization has {self.mean.shape[1]}")
        images = images.float()
        if self.scale is not None:
            gen = step_generator(self.seed, step, self.rank, stream=1)
            boxes = crop_boxes(b, h, w, self.scale, gen).to(images.device)
            images = resample(images, boxes, self.size)
        elif (h, w) != (self.size, self.size):
            full = torch.tensor([[0.0, 0.0, float(w), float(h)]], device=images.device).expand(b, 4)
            images = resample(images, full, self.size)
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        return (images - mean) / std
