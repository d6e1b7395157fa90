"""Reading one shard for the validation gate: every sample decoded once, in bounded memory.

`read_shard` streams a tar through pipeline/data/tario.py (unsafe members make the shard unreadable,
with the reason), groups members into samples the webdataset way (consecutive members sharing the
key = path up to the basename's first dot), decodes each image once with PIL and keeps only small
facts per sample (`SAMPLE_FIELDS`) plus per-channel pixel histograms: the decoded pixels are dropped
as soon as they are counted, so memory does not grow with the shard or the dataset.

Pixel statistics (per-image mean/std, the split mean/std and the train normalisation) come from a
seeded sample: a sample key is in it when a hash of (seed, key) falls below `rate` (the split's
`validate.pixel_sample` / split size, capped at 1), so the sample does not depend on shard order or
worker count. Integrity facts (decodes, hashes, sizes, modes, pixel hash for duplicates and
leakage, constant images) cover every sample. Histogram sums are exact integers.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from pipeline.data.codecs import IMAGE_EXTS, PIL_FORMATS
from pipeline.data.tario import UnsafeTarError, iter_members

SAMPLE_FIELDS = [
    "key", "tar_shard", "has_image", "has_cls", "has_json", "decodes", "decode_error", "image_sha256",
    "pixel_hash", "tar_width", "tar_height", "tar_mode", "cls", "json_ok", "pixel_mean", "pixel_std", "constant",
]  # fmt: skip
_LEVELS = np.arange(256, dtype=np.int64)


@dataclass
class ShardRead:
    """What one shard holds: one fact row per sample and the pooled pixel histograms of its sample."""

    ident: str
    readable: bool = True
    error: str | None = None
    rows: list[tuple] = field(default_factory=list)
    hist: dict[int, np.ndarray] = field(default_factory=dict)  # channels -> int64 [channels, 256]
    sampled: int = 0


def in_sample(seed: int, key: str, rate: float) -> bool:
    """Whether `key` belongs to the seeded pixel sample of its split (`rate` in [0, 1])."""
    if rate >= 1.0:
        return True
    digest = hashlib.blake2b(f"{seed}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


def grouped_samples(path: str, out: ShardRead) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample in tar order; a damaged or unsafe tar marks `out`
    unreadable (the samples read before the damage are still yielded)."""
    key, members = None, {}
    try:
        for name, body in iter_members(path):
            slash = name.rfind("/") + 1
            stem, _, ext = name[slash:].partition(".")
            if name[:slash] + stem != key:
                if key is not None:
                    yield key, members
                key, members = name[:slash] + stem, {}
            members[ext.lower()] = body
    except (tarfile.TarError, OSError, EOFError, UnicodeError, UnsafeTarError) as exc:
        out.readable, out.error = False, f"{type(exc).__name__}: {exc}"[:300]
    if key is not None:
        yield key, members


def histogram(arr: np.ndarray) -> np.ndarray:
    """int64 [channels, 256] counts of a uint8 H×W or H×W×C image."""
    planes = arr.reshape(-1, 1 if arr.ndim == 2 else arr.shape[-1])
    return np.stack([np.bincount(planes[:, c], minlength=256) for c in range(planes.shape[1])]).astype(np.int64)


def _image(members: dict[str, bytes]) -> tuple[str | None, bytes | None]:
    for ext in IMAGE_EXTS:
        if ext in members:
            return ext, members[ext]
    return None, None


def sample_row(key: str, ident: str, members: dict[str, bytes], sampled: bool, out: ShardRead) -> list:
    """The facts of one sample (`SAMPLE_FIELDS` order); a sampled image's histogram joins `out.hist`."""
    ext, data = _image(members)
    cls, meta = members.get("cls"), members.get("json")
    sha = hashlib.sha256(data).hexdigest() if data is not None else None
    label = cls.decode("ascii", "replace").strip() if cls is not None else None
    json_ok = None
    if meta is not None:
        try:
            info = json.loads(meta)
            json_ok = info.get("sha256") == sha and str(info.get("label")) == label
        except (ValueError, AttributeError):
            json_ok = False
    decodes, error, phash, width, height, mode, mean, std, const = (None,) * 9
    if data is not None:
        try:  # the extension names the format: a .png must be a PNG, a .jpg a JPEG
            with Image.open(io.BytesIO(data), formats=[PIL_FORMATS[ext]]) as im:  # type: ignore[index]
                im.load()
                arr, mode, width, height = np.asarray(im), im.mode, im.width, im.height
            decodes = True
        except Exception as exc:  # any decoder failure means a corrupt sample; record why
            decodes, error = False, re.sub(r" ?<[^<>]* at 0x[0-9a-f]+>", "", f"{type(exc).__name__}: {exc}")[:200]
    if decodes:
        phash = hashlib.blake2b(f"{mode}{arr.shape}".encode() + arr.tobytes(), digest_size=16).hexdigest()
        const = bool(arr.min() == arr.max()) if arr.size else True
        if sampled and arr.dtype == np.uint8 and arr.size:
            hist = histogram(arr)
            slot = out.hist.setdefault(hist.shape[0], np.zeros_like(hist))
            slot += hist
            out.sampled += 1
            n = hist.sum()
            mean = float((hist @ _LEVELS).sum() / (n * 255.0))
            std = float(np.sqrt(max((hist @ _LEVELS**2).sum() / (n * 65025.0) - mean**2, 0.0)))
    return [key, ident, data is not None, cls is not None, meta is not None, decodes, error, sha, phash,
            width, height, mode, label, json_ok, mean, std, const]  # fmt: skip


def read_shard(job: tuple[str, str, float, int]) -> ShardRead:
    """Read one tar (path, ident, pixel-sample rate, seed): a fact row per sample, pixel histograms."""
    path, ident, rate, seed = job
    out = ShardRead(ident)
    for key, members in grouped_samples(path, out):
        out.rows.append(tuple(sample_row(key, ident, members, in_sample(seed, key, rate), out)))
    return out


def pixel_totals(reads: list[ShardRead], split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Pooled (pixels per channel, sum, sum of squares) of a split's pixel sample, values in [0, 1],
    for its majority channel count; None when no image of the split was sampled."""
    per_c: dict[int, np.ndarray] = {}
    for r in reads:
        if r.ident.split("/")[0] != split:
            continue
        for c, hist in r.hist.items():
            per_c[c] = per_c.get(c, 0) + hist
    if not per_c:
        return None
    hist = max(per_c.values(), key=lambda h: int(h.sum()))
    n = hist.sum(axis=1)
    return n.astype(np.float64), (hist @ _LEVELS) / 255.0, (hist @ _LEVELS**2) / 65025.0
