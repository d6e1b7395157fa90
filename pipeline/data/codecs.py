"""Image bytes in the shards: how they are encoded at shard time and decoded by the readers.

A sample stores its image under one of `IMAGE_EXTS` (`png`: lossless, the Fashion-MNIST default;
`jpg`: photos, re-encoded with `data.jpeg_quality` or the source file's own bytes). Encoding is
deterministic (same pixels and params → same bytes). Readers decode with torchvision's libpng /
libjpeg-turbo decoders straight into a uint8 tensor (`decode_tensor`; ~1.3-1.5x faster than PIL here,
bench/photos.py); PNG is lossless, so this gives exactly the pixels PIL gives. torchvision 0.29
deprecates its image codecs in favour of TorchCodec (not a dependency here): the deprecation warning
is silenced for this one call, and where a torchvision without them is installed, PIL decodes instead.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image

try:
    from torchvision.io import ImageReadMode, decode_image
except ImportError:  # a torchvision that dropped its image codecs: PIL below
    decode_image = None  # type: ignore[assignment]

IMAGE_EXTS = ("png", "jpg", "jpeg")
PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG"}
EXT_OF_FORMAT = {"PNG": "png", "JPEG": "jpg", "MPO": "jpg"}  # PIL format -> sample extension


def encode_png(img: Image.Image) -> bytes:
    """Lossless, deterministic PNG bytes for a PIL image."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    """Deterministic baseline JPEG bytes (4:2:0 chroma for RGB, no EXIF/ICC) for an L or RGB image."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=False, progressive=False)
    return buf.getvalue()


def encode(img: Image.Image, ext: str, quality: int) -> bytes:
    """Bytes of `img` for the sample extension `ext` (png or jpg)."""
    return encode_png(img) if ext == "png" else encode_jpeg(img, quality)


def image_member(sample: dict) -> tuple[str, bytes]:
    """(extension, bytes) of the image member of a raw webdataset sample; KeyError naming what exists."""
    for ext in IMAGE_EXTS:
        if ext in sample:
            return ext, sample[ext]
    members = sorted(k for k in sample if not k.startswith("__"))
    raise KeyError(f"no image member (one of {', '.join(IMAGE_EXTS)}); members: {', '.join(members) or 'none'}")


def decode_tensor(data: bytes) -> torch.Tensor:
    """PNG or JPEG bytes → uint8 [C, H, W] (C = 1 for grey, 3 for RGB), via torchvision (else PIL)."""
    if decode_image is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
    return decode_pil(data)


def decode_pil(data: bytes) -> torch.Tensor:
    """PNG or JPEG bytes → uint8 [C, H, W] via PIL (the fallback and the reference of the tests)."""
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy())
