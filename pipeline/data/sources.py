"""Image sources and their deterministic train/val/test split.

A source turns a dataset on disk into `SourceDataset`: class names plus, per split, a list of
`SourceItem`s that each know how to load one image (as a PIL image in the configured mode and size).
Two sources exist: `fashion-mnist` (the idx gz files of Debian's `dataset-fashion-mnist`) and
`imagefolder` (one sub-directory per class of JPEG/PNG images of any size and mode).
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.config import DataParams

SPLITS = ("train", "val", "test")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
INSTALL_HINT = "install it with `apt-get install -y dataset-fashion-mnist` (or set data.root to its directory)"


class SourceError(RuntimeError):
    """The source dataset is missing or malformed (a problem with the whole source)."""


class CorruptImageError(ValueError):
    """One input file cannot be used as an image; `path` and `reason` say which and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple:  # picklable across the shard writer's worker processes
        return (CorruptImageError, (self.path, self.reason))


@dataclass(frozen=True)
class SourceItem:
    """One image of the source: a stable id, its label and a loader returning a PIL image."""

    source_id: str
    label: int
    load: Callable[[], Image.Image] = field(compare=False, repr=False)


@dataclass
class SourceDataset:
    """A split source: class names and the items of each split, in a deterministic order."""

    name: str
    root: str
    classes: list[str]
    splits: dict[str, list[SourceItem]]
    rejected: list[CorruptImageError] = field(default_factory=list)


def load_source(params: DataParams) -> SourceDataset:
    """Open the configured source and split it deterministically (seeded, class-stratified)."""
    if params.source == "fashion-mnist":
        return _fashion_mnist(params)
    return _imagefolder(params)


# --- Fashion-MNIST -----------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """Read an idx (optionally gzipped) file as a numpy array, checking its header."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise SourceError(f"{path}: cannot read idx file: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise SourceError(f"{path}: not an unsigned-byte idx file (bad magic {data[:4].hex()})")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise SourceError(f"{path}: header says {dims} but holds {body.size} bytes")
    return body.reshape(dims)


def _fashion_mnist(params: DataParams) -> SourceDataset:
    root = Path(params.root)
    if not root.is_dir():
        raise SourceError(f"Fashion-MNIST directory {root} does not exist: {INSTALL_HINT}")
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, (img_name, lbl_name) in FASHION_MNIST_FILES.items():
        img_path, lbl_path = root / img_name, root / lbl_name
        for p in (img_path, lbl_path):
            if not p.is_file():
                raise SourceError(f"Fashion-MNIST file {p} is missing: {INSTALL_HINT}")
        images, labels = read_idx(img_path), read_idx(lbl_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise SourceError(f"{img_path}: shape {images.shape} does not match labels {labels.shape}")
        if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
            raise SourceError(f"{lbl_path}: label {labels.max()} outside 0..{len(FASHION_MNIST_CLASSES) - 1}")
        arrays[split] = (images, labels)

    train_labels = arrays["train"][1]
    val_idx, train_idx = stratified_split(train_labels, params.val_size, params.seed)
    order = {
        "train": train_idx,
        "val": val_idx,
        "test": np.arange(len(arrays["test"][1])),
    }
    splits = {}
    for split, idx in order.items():
        src_split = "test" if split == "test" else "train"
        images, labels = arrays[src_split]
        idx = shuffled(idx, params.seed, split)
        idx = cap_per_class(idx, labels, params.max_per_class)
        splits[split] = [
            SourceItem(f"fashion-mnist/{src_split}/{i:05d}", int(labels[i]), _array_loader(images, int(i))) for i in idx
        ]
    return SourceDataset("fashion-mnist", str(root), list(FASHION_MNIST_CLASSES), splits)


def _array_loader(images: np.ndarray, i: int) -> Callable[[], Image.Image]:
    return functools.partial(Image.fromarray, np.ascontiguousarray(images[i]))


# --- split helpers ------------------------------------------------------------------------------


def stratified_split(labels: np.ndarray, n_holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded class-stratified holdout: returns (holdout indices, rest), both sorted.

    Each class contributes in proportion to its size (largest remainders get the leftovers).
    """
    labels = np.asarray(labels)
    n = len(labels)
    if not 0 <= n_holdout < n:
        raise SourceError(f"holdout size {n_holdout} must be in [0, {n})")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n_holdout / n
    take = np.floor(exact).astype(int)
    leftovers = n_holdout - take.sum()
    take[np.argsort(-(exact - take), kind="stable")[:leftovers]] += 1
    holdout = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take, strict=True)]
    hold = np.sort(np.concatenate(holdout)) if holdout else np.array([], dtype=int)
    rest = np.setdiff1d(np.arange(n), hold)
    return hold, rest


def shuffled(idx: np.ndarray, seed: int, salt: str) -> np.ndarray:
    """A seeded permutation of `idx` (salted per split so splits do not share an order)."""
    rng = np.random.default_rng([seed, sum(salt.encode())])
    return np.asarray(idx)[rng.permutation(len(idx))]


def cap_per_class(idx: np.ndarray, labels: np.ndarray, cap: int | None) -> np.ndarray:
    """Keep at most `cap` items of each class, preserving order."""
    if cap is None:
        return idx
    seen: dict[int, int] = {}
    keep = []
    for i in idx:
        c = int(labels[i])
        if seen.get(c, 0) < cap:
            seen[c] = seen.get(c, 0) + 1
            keep.append(i)
    return np.asarray(keep, dtype=int)


# --- imagefolder --------------------------------------------------------------------------------


def _imagefolder(params: DataParams) -> SourceDataset:
    root = Path(params.root)
    if not root.is_dir():
        raise SourceError(f"imagefolder root {root} does not exist or is not a directory")
    real_root = root.resolve()
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise SourceError(f"imagefolder root {root} has no class sub-directories")
    rejected: list[CorruptImageError] = []
    files: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        found = 0
        for path in sorted((root / name).rglob("*")):
            if path.is_dir():
                continue
            rel = path.relative_to(root).as_posix()
            problem = _file_problem(path, real_root)
            if problem:
                rejected.append(CorruptImageError(rel, problem))
                continue
            files.append((rel, label))
            found += 1
        if found == 0:
            rejected.append(CorruptImageError(f"{name}/", "class directory holds no usable image"))
    if params.on_corrupt == "fail" and rejected:
        raise rejected[0]
    labels = np.array([lbl for _, lbl in files])
    splits = _split_fractions(labels, params)
    out = {}
    for split, idx in splits.items():
        idx = cap_per_class(shuffled(idx, params.seed, split), labels, params.max_per_class)
        out[split] = [
            SourceItem(files[i][0], int(labels[i]), _file_loader(root / files[i][0], files[i][0], params)) for i in idx
        ]
    return SourceDataset("imagefolder", str(root), classes, out, rejected)


def _file_problem(path: Path, real_root: Path) -> str | None:
    if path.is_symlink():
        target = path.resolve()
        if not target.is_relative_to(real_root):
            return f"symlink pointing outside the dataset root (to {target})"
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return f"not an image file (suffix {path.suffix or 'none'!r}; expected one of {sorted(IMAGE_SUFFIXES)})"
    if not path.exists():
        return "broken symlink"
    if os.path.getsize(path) == 0:
        return "zero-byte file"
    return None


def _split_fractions(labels: np.ndarray, params: DataParams) -> dict[str, np.ndarray]:
    n = len(labels)
    n_test = round(n * params.test_fraction)
    test, rest = stratified_split(labels, n_test, params.seed)
    n_val = round(n * params.val_fraction)
    val_rel, train_rel = stratified_split(labels[rest], n_val, params.seed + 1)
    return {"train": rest[train_rel], "val": rest[val_rel], "test": test}


def _file_loader(path: Path, rel: str, params: DataParams) -> Callable[[], Image.Image]:
    return functools.partial(open_image, path, rel, params)


def open_image(path: Path, rel: str, params: DataParams) -> Image.Image:
    """Decode one file fully and normalise it to the configured mode and size policy."""
    try:
        with Image.open(path) as im:
            im.load()
            img = im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CorruptImageError(rel, f"cannot decode image: {exc}") from None
    img = to_mode(img, params.image_mode)
    if params.image_size is not None:
        img = resize(img, params.image_size, params.resize)
    return img


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


def resize(img: Image.Image, size: int, policy: str) -> Image.Image:
    """Square output of side `size`: center-crop, pad (letterbox, black) or stretch."""
    if policy == "stretch":
        return img.resize((size, size), Image.Resampling.BICUBIC)
    if policy == "pad":
        return ImageOps.pad(img, (size, size), Image.Resampling.BICUBIC, color=0)
    return ImageOps.fit(img, (size, size), Image.Resampling.BICUBIC)
