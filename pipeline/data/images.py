"""Source image files → the image a shard stores: decoding, mode conversion, resize policies.

`read_image` decodes one file (read once), converts it to `data.image_mode` and applies
`data.resize` when `data.image_size` is set; it also says whether the result is exactly what the
file's own bytes decode to (`StoredImage.source_bytes`), which is what `data.encoding: keep` needs to
store those bytes untouched. Resize policies (all bicubic, antialiased by PIL):

- `keep-ratio`: shorter side to `image_size`, aspect kept (ImageNet's usual ~256 px storage; the
  train-time crop then sees the whole field of view);
- `center-crop`, `pad` (letterbox, black), `stretch`: a square of side `image_size`.

A JPEG much larger than the target is decoded at a reduced DCT scale first (PIL `draft`: ≥ the
target size, 2-8x faster to decode); the output stays deterministic.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.config import DataParams
from pipeline.data.codecs import EXT_OF_FORMAT

RESAMPLE = Image.Resampling.BICUBIC
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class CorruptImageError(ValueError):
    """One input file cannot be used as an image; `path` and `reason` say which and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple:  # picklable across the shard writer's worker processes
        return (CorruptImageError, (self.path, self.reason))


MAX_REPORTED = 100  # unusable files listed by one `data.on_corrupt: fail` error before it stops looking


class UnusableInputsError(CorruptImageError):
    """`data.on_corrupt: fail` found unusable inputs: all of them (up to MAX_REPORTED), each with its reason.
    `path`/`reason` are those of the first; `errors` holds every one."""

    def __init__(self, errors: list[CorruptImageError], complete: bool = True) -> None:
        self.errors = list(errors)
        self.complete = complete
        self.path, self.reason = errors[0].path, errors[0].reason
        more = "" if complete else f"; stopped looking after {len(errors)}, there may be more"
        lines = "".join(f"\n  {e.path}: {e.reason}" for e in errors)
        ValueError.__init__(self, f"{len(errors)} unusable input file(s){more}:{lines}")

    def __reduce__(self) -> tuple:
        return (UnusableInputsError, (self.errors, self.complete))


@dataclass
class StoredImage:
    """The image to store, plus the source file's bytes and extension when they decode to exactly it."""

    image: Image.Image
    source_bytes: bytes | None = None
    source_ext: str | None = None


def to_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert any PIL mode to L or RGB; transparency is composited over white."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        span = max(arr.max() - arr.min(), 1e-12)
        img = Image.fromarray(((arr - arr.min()) / span * 255).round().astype(np.uint8), mode="L")
    return img.convert(mode)


def keep_ratio_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) with the shorter side `size` and the aspect ratio kept (the longer side rounded)."""
    if width <= height:
        return size, max(size, round(height * size / width))
    return max(size, round(width * size / height)), size


def target_size(width: int, height: int, size: int, policy: str) -> tuple[int, int]:
    """Output (w, h) of a resize policy."""
    return keep_ratio_size(width, height, size) if policy == "keep-ratio" else (size, size)


def resize(img: Image.Image, size: int, policy: str) -> Image.Image:
    """Apply a resize policy (module docstring); returns `img` itself when it already has the output size
    and the policy would not change it (any square image of side `size`, or keep-ratio's shape)."""
    target = target_size(img.width, img.height, size, policy)
    if img.size == target:
        return img
    if policy == "keep-ratio":
        return img.resize(target, RESAMPLE)
    if policy == "stretch":
        return img.resize((size, size), RESAMPLE)
    if policy == "pad":
        return ImageOps.pad(img, (size, size), RESAMPLE, color=0)
    return ImageOps.fit(img, (size, size), RESAMPLE)


def _draft_size(width: int, height: int, size: int, policy: str) -> tuple[int, int]:
    """The smallest decode size every policy can still resize *down* from."""
    scale = size / (max(width, height) if policy == "pad" else min(width, height))
    return math.ceil(width * scale), math.ceil(height * scale)


def _keepable(im: Image.Image, data: bytes, mode: str) -> bool:
    """Whether `data` decodes (with torchvision as with PIL) to exactly `im` in `mode`, unconverted."""
    if im.mode != mode or mode not in ("L", "RGB") or "transparency" in im.info:
        return False
    if im.format == "PNG":  # 8-bit grey or RGB only (PIL shows 16-bit RGB as RGB)
        return len(data) > 26 and data[24] == 8 and data[25] == (0 if mode == "L" else 2)
    return im.format == "JPEG"


def decode_bytes(data: bytes, rel: str, params: DataParams) -> StoredImage:
    """Decode file bytes and apply the mode and resize policy of `params` (module docstring)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            size = params.image_size
            needs_resize = size is not None and target_size(*im.size, size, params.resize) != im.size
            if needs_resize and im.format == "JPEG":  # source mode kept: conversion stays PIL's convert()
                im.draft(None, _draft_size(*im.size, size, params.resize))  # type: ignore[arg-type]
            im.load()
            keep = not needs_resize and _keepable(im, data, params.image_mode)
            ext = EXT_OF_FORMAT.get(im.format or "")
            img = im.copy()
    except _DECODE_ERRORS as exc:
        raise CorruptImageError(rel, f"cannot decode image: {exc}") from None
    img = to_mode(img, params.image_mode)
    if params.image_size is not None:
        img = resize(img, params.image_size, params.resize)
    return StoredImage(img, data if keep else None, ext)


def read_image(path: Path, rel: str, params: DataParams) -> StoredImage:
    """Read and decode one file (see `decode_bytes`)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorruptImageError(rel, f"cannot read file: {exc}") from None
    return decode_bytes(data, rel, params)


def open_image(path: Path, rel: str, params: DataParams) -> Image.Image:
    """Decode one file fully and normalise it to the configured mode and size policy."""
    return read_image(path, rel, params).image


def pixel_digest(img: Image.Image) -> str:
    """Hash of the decoded pixels (mode, size and bytes): equal digests = identical images."""
    return hashlib.blake2b(f"{img.mode}{img.size}".encode() + img.tobytes(), digest_size=16).hexdigest()


def source_digest(path: Path, rel: str, mode: str) -> str:
    """`pixel_digest` of a file fully decoded and converted to `mode` (before any resize)."""
    try:
        with Image.open(path) as im:
            im.load()
            img = to_mode(im, mode)
    except _DECODE_ERRORS as exc:
        raise CorruptImageError(rel, f"cannot decode image: {exc}") from None
    return pixel_digest(img)
