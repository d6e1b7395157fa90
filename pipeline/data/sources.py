"""Image sources and their deterministic train/val/test split.

A source turns a dataset on disk into `SourceDataset`: class names plus, per split, a list of
`SourceItem`s that each know how to load one image (as a PIL image in the configured mode and size;
file sources also say whether the file's own bytes are that image, for `data.encoding: keep`).
Two sources exist: `fashion-mnist` (the idx gz files of Debian's `dataset-fashion-mnist`) and
`imagefolder` (one sub-directory per class of JPEG/PNG images of any size and mode; decoding and
resize policies in pipeline/data/images.py). With `data.deduplicate`, exact pixel duplicates are
dropped before the split (pipeline/data/dedup.py).

Unusable inputs found while listing (zero-byte, non-image, escaping symlink, a class directory with no
usable image) are collected in `SourceDataset.rejected`, whatever `data.on_corrupt` says: the shard writer
adds the files that fail to decode and then skips them all (listed) or fails naming all of them. With
`skip`, an empty class is dropped and the labels renumbered, so every label index has images.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.config import DataParams
from pipeline.data.dedup import file_digests, first_occurrences
from pipeline.data.images import MAX_REPORTED, CorruptImageError, StoredImage, UnusableInputsError, read_image

__all__ = ["SPLITS", "CorruptImageError", "SourceDataset", "SourceError", "SourceItem", "load_source"]

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


@dataclass(frozen=True, slots=True)
class SourceItem:
    """One image of the source: a stable id, its label and a loader returning a PIL image; file
    sources also give `read` (the image plus the file's bytes when they are exactly that image)."""

    source_id: str
    label: int
    load: Callable[[], Image.Image] = field(compare=False, repr=False)
    read: Callable[[], StoredImage] | None = field(default=None, compare=False, repr=False)

    def stored(self) -> StoredImage:
        """The image to store (`read()` where the source has it, else `load()` without source bytes)."""
        return self.read() if self.read is not None else StoredImage(self.load())


@dataclass
class SourceDataset:
    """A split source: class names and the items of each split, in a deterministic order."""

    name: str
    root: str
    classes: list[str]
    splits: dict[str, list[SourceItem]]
    rejected: list[CorruptImageError] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)  # {"path", "duplicate_of"} (deduplicate)
    source_bytes: int | None = None  # total size of the source files in the splits (imagefolder)


def load_source(params: DataParams, workers: int | None = None) -> SourceDataset:
    """Open the configured source and split it deterministically (seeded, class-stratified).
    `workers`: processes for the `deduplicate` fingerprint pass (default: all cores)."""
    if params.source == "fashion-mnist":
        return _fashion_mnist(params)
    return _imagefolder(params, workers)


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

    candidates = {"train": np.arange(len(arrays["train"][1])), "test": np.arange(len(arrays["test"][1]))}
    duplicates: list[dict[str, str]] = []
    if params.deduplicate:
        candidates, duplicates = _dedup_arrays(arrays)
    train_labels = arrays["train"][1][candidates["train"]]
    val_rel, train_rel = stratified_split(train_labels, params.val_size, params.seed)
    order = {
        "train": candidates["train"][train_rel],
        "val": candidates["train"][val_rel],
        "test": candidates["test"],
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
    return SourceDataset("fashion-mnist", str(root), list(FASHION_MNIST_CLASSES), splits, duplicates=duplicates)


def _dedup_arrays(arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Indices of the first occurrence of each distinct image (train listed first, then test)."""
    ids = [(split, i) for split in ("train", "test") for i in range(len(arrays[split][0]))]
    digests = [hashlib.blake2b(np.ascontiguousarray(arrays[s][0][i]).tobytes(), digest_size=16).hexdigest()
               for s, i in ids]  # fmt: skip
    keep, dropped = first_occurrences(digests)
    kept = {split: np.array([ids[k][1] for k in keep if ids[k][0] == split], dtype=int) for split in ("train", "test")}

    def source_id(k: int) -> str:
        return f"fashion-mnist/{ids[k][0]}/{ids[k][1]:05d}"

    return kept, [{"path": source_id(d), "duplicate_of": source_id(f)} for d, f in dropped]


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


def _imagefolder(params: DataParams, workers: int | None = None) -> SourceDataset:
    root = Path(params.root)
    if not root.is_dir():
        raise SourceError(f"imagefolder root {root} does not exist or is not a directory")
    real_root = root.resolve()
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise SourceError(f"imagefolder root {root} has no class sub-directories")
    rejected: list[CorruptImageError] = []
    files: list[tuple[str, int]] = []
    found = [0] * len(classes)
    sizes: dict[str, int] = {}
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.is_dir():
                continue
            rel = path.relative_to(root).as_posix()
            problem = _file_problem(path, real_root)
            if problem:
                rejected.append(CorruptImageError(rel, problem))
                continue
            files.append((rel, label))
            found[label] += 1
            sizes[rel] = path.stat().st_size
    duplicates: list[dict[str, str]] = []
    if params.deduplicate:
        files, duplicates = _dedup_files(root, files, params, workers, rejected, found)
    classes, files = _drop_empty_classes(classes, files, found, params, rejected)
    if not files:
        raise UnusableInputsError(rejected[:MAX_REPORTED], len(rejected) <= MAX_REPORTED)
    labels = np.array([lbl for _, lbl in files])
    splits = _split_fractions(labels, params)
    out = {}
    for split, idx in splits.items():
        idx = cap_per_class(shuffled(idx, params.seed, split), labels, params.max_per_class)
        out[split] = [_file_item(root, files[i][0], int(labels[i]), params) for i in idx]
    source_bytes = sum(sizes[item.source_id] for items in out.values() for item in items)
    return SourceDataset("imagefolder", str(root), classes, out, rejected, duplicates, source_bytes)


def _drop_empty_classes(
    classes: list[str], files: list[tuple[str, int]], found: list[int], params: DataParams,
    rejected: list[CorruptImageError],
) -> tuple[list[str], list[tuple[str, int]]]:  # fmt: skip
    """A class directory without a usable image is listed in `rejected`; with `on_corrupt: skip` it is also
    dropped and the labels renumbered 0..n-1 (no label index without images). `fail`: the shard writer
    stops, naming it with every other unusable input."""
    empty = [name for name, n in zip(classes, found, strict=True) if n == 0]
    if not empty:
        return classes, files
    skip = params.on_corrupt == "skip"
    reason = "class directory holds no usable image" + ("; class dropped, labels renumbered" if skip else "")
    rejected += [CorruptImageError(f"{name}/", reason) for name in empty]
    if not skip:
        return classes, files
    kept = [i for i, n in enumerate(found) if n > 0]
    if not kept:
        raise SourceError(f"imagefolder root {params.root}: no class directory holds a usable image")
    relabel = {old: new for new, old in enumerate(kept)}
    return [classes[i] for i in kept], [(rel, relabel[label]) for rel, label in files]


class _FileReader:
    """`read_image` of one file of the folder, as a small picklable callable: a source holds one per
    image (a million for ImageNet), so it keeps the shared root and params by reference and builds the
    path only when called (slotted: 0.27 KB per image with its `SourceItem`, not 0.75 KB: a test)."""

    __slots__ = ("params", "rel", "root")

    def __init__(self, root: Path, rel: str, params: DataParams) -> None:
        self.root, self.rel, self.params = root, rel, params

    def __call__(self) -> StoredImage:
        return read_image(self.root / self.rel, self.rel, self.params)

    def image(self) -> Image.Image:
        return self().image


def _file_item(root: Path, rel: str, label: int, params: DataParams) -> SourceItem:
    reader = _FileReader(root, rel, params)
    return SourceItem(rel, label, reader.image, reader)


def _dedup_files(
    root: Path,
    files: list[tuple[str, int]],
    params: DataParams,
    workers: int | None,
    rejected: list[CorruptImageError],
    found: list[int],
) -> tuple[list[tuple[str, int]], list[dict[str, str]]]:
    """Drop exact pixel duplicates (first in listing order kept); undecodable files join `rejected`."""
    from tqdm import tqdm

    with tqdm(total=len(files), desc="deduplicate", unit="img", disable=None) as bar:
        digests = file_digests(root, [rel for rel, _ in files], params.image_mode, workers, bar.update)
    usable = []
    for (rel, label), digest in zip(files, digests, strict=True):
        if isinstance(digest, CorruptImageError):
            rejected.append(digest)
            found[label] -= 1
        else:
            usable.append((rel, label, digest))
    keep, dropped = first_occurrences([d for _, _, d in usable])
    for i, _ in dropped:
        found[usable[i][1]] -= 1
    duplicates = [{"path": usable[i][0], "duplicate_of": usable[f][0]} for i, f in dropped]
    return [(usable[i][0], usable[i][1]) for i in keep], duplicates


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
