"""Per-sample image transforms on uint8 [C, H, W] tensors, run in the loader workers.

- `RandomResizedCrop`: the paper's (and torchvision's) train-time crop: a box of area fraction in
  `scale` and aspect ratio log-uniform in `ratio` (10 tries, then the central crop of the clamped
  aspect), cut from the *full* stored image and resized to `size`×`size`, bilinear and antialiased
  (`torchvision.transforms.v2.functional.resized_crop`). Its randomness comes only from the
  `torch.Generator` it is given, so the caller decides the seeding (pipeline/data/loader.py).
- `CenterCrop`: evaluation (and no-augmentation training): resize the shorter side to
  `round(size / ratio)` and cut the central `size`×`size` (ImageNet's 256 → 224 is ratio 0.875).

Both return the input tensor itself when it is already `size`×`size` and nothing is to be cut
(CenterCrop always; RandomResizedCrop never, it always draws a box), so model-sized images pass
through bit-identical.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

RATIO = (3.0 / 4.0, 4.0 / 3.0)


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen, dtype=torch.float64))


def _randint(gen: torch.Generator, high: int) -> int:
    """Uniform integer in [0, high]."""
    return int(torch.randint(0, high + 1, (), generator=gen))


def crop_box(
    height: int, width: int, scale: Sequence[float], gen: torch.Generator, ratio: Sequence[float] = RATIO
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random-resized-crop box, torchvision's algorithm with a given generator."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * _uniform(gen, scale[0], scale[1])
        aspect = math.exp(_uniform(gen, log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return _randint(gen, height - h), _randint(gen, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class RandomResizedCrop:
    """`(image, generator) -> image`: a random box of the full image, resized to `size`×`size`."""

    def __init__(self, size: int, scale: Sequence[float], ratio: Sequence[float] = RATIO) -> None:
        if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"bad crop scale {list(scale)} (want 0 < lo <= hi <= 1) or ratio {list(ratio)}")
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)

    def __call__(self, img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        top, left, h, w = crop_box(img.shape[-2], img.shape[-1], self.scale, gen, self.ratio)
        return resized_crop(img, top, left, h, w, self.size)


def resized_crop(img: torch.Tensor, top: int, left: int, h: int, w: int, size: int) -> torch.Tensor:
    """The box (top, left, h, w) of `img` resized to `size`×`size`, bilinear, antialiased."""
    return F.resized_crop(img, top, left, h, w, [size, size], InterpolationMode.BILINEAR, antialias=True)


class CenterCrop:
    """`(image, generator=None) -> image`: shorter side to `round(size / ratio)`, central `size`×`size`."""

    def __init__(self, size: int, ratio: float = 1.0) -> None:
        if not 0 < ratio <= 1:
            raise ValueError(f"crop ratio must be in (0, 1], got {ratio}")
        self.size, self.ratio = size, ratio

    def __call__(self, img: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        h, w = img.shape[-2:]
        if (h, w) == (self.size, self.size):
            return img
        short = max(self.size, round(self.size / self.ratio))
        if min(h, w) != short:
            nh, nw = (short, max(short, round(w * short / h))) if h <= w else (max(short, round(h * short / w)), short)
            img = F.resize(img, [nh, nw], InterpolationMode.BILINEAR, antialias=True)
        return F.center_crop(img, [self.size, self.size])
