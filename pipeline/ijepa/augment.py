"""Input pipeline of pretraining: the per-sample crop (loader workers) and the batch normalisation.

- `train_transform(size, scale)`: what the training loader runs on each decoded uint8 image in its
  workers. With `train.augment_scale` set, the paper's RandomResizedCrop (area fraction in `scale`,
  aspect 3/4-4/3) of the *full* stored image, resized to `model.img_size` bilinear + antialiased
  (pipeline/data/transforms.py); its generator is seeded per (seed, data epoch, rank, worker) by the
  loader, so a resumed run that replays the stream position sees exactly the same crops. Without a
  scale, images not already model-sized get a resize (shorter side) + centre crop; model-sized
  images pass through untouched.
- `BatchTransform`: a uint8 batch (as the loader delivers it) scaled to [0, 1], then `(x - mean) / std`
  in float32 on the batch's device (the arithmetic of the evaluation features, pipeline/eval/features.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pipeline.data.loader import to_unit_float
from pipeline.data.transforms import CenterCrop, RandomResizedCrop


def train_transform(size: int, scale: Sequence[float] | None) -> RandomResizedCrop | CenterCrop:
    """The sample transform of pretraining for `model.img_size` and `train.augment_scale`."""
    return RandomResizedCrop(size, scale) if scale is not None else CenterCrop(size, ratio=1.0)


class BatchTransform:
    """uint8 images (or float in [0, 1]), already `size`×`size` (the loader's sample transform) → in [0, 1],
    normalised by `mean`/`std`."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"bad normalization mean={list(mean)} std={list(std)}")
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor, step: int = 0) -> torch.Tensor:
        """Normalise one batch (update `step` is accepted for the call site; nothing here is random)."""
        _, c, h, w = images.shape
        if c != self.mean.shape[1]:
            raise ValueError(f"images have {c} channels but the normalization has {self.mean.shape[1]}")
        if (h, w) != (self.size, self.size):
            raise ValueError(
                f"batch images are {h}x{w}, the model wants {self.size}x{self.size}: give the loader the "
                f"sample transform `train_transform(size, augment_scale)` (pipeline/ijepa/augment.py)"
            )
        images = to_unit_float(images).float()
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        return (images - mean) / std
