"""Image bytes in the shards: how they are encoded at shard time and found by the readers.

A sample stores its image under one of `IMAGE_EXTS` (`png`: lossless, the Fashion-MNIST default;
`jpg`: photos, re-encoded with `data.jpeg_quality` or the source file's own bytes). Encoding is
deterministic (same pixels and params → same bytes). PIL only (the shard and validate stages stay
free of torch); decoding into tensors lives with the loaders (pipeline/data/loader.py).
"""

from __future__ import annotations

import io

from PIL import Image

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
