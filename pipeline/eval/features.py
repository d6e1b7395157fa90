"""Frozen features, extracted once per split and cached on disk for every evaluation protocol.

Owns the feature definition of the evaluation protocol (DESIGN.md §4) and the `data/features/` cache:

- encoder features: the frozen **target** encoder on inputs normalised with `encoder.json`'s
  `normalization`; average pool of the last layer's patch tokens (after the final LayerNorm), or the
  concatenation of the last `last_layers` layers' pools, each passed through the final LayerNorm;
- raw-pixel features: the same normalised pixels, flattened (a baseline, no network); images larger than
  `raw_pixels_size` (eval param, 32) are first area-averaged to that square, the classic "tiny images"
  baseline, so a 224-px RGB set holds 3,072 dims per image instead of 150,528 (Fashion-MNIST: as stored).

Cache layout (written by stage `features`, read by `eval_linear` / `eval_lowshot`)::

    data/features/index.json                  what was extracted: sets, steps, sizes, dims, timings
    data/features/{set}/{train,val,test}.npz  `features` float32 [N, D], `labels` int64 [N], `keys` str [N]

where `set` is `encoder`, `random_init`, `raw_pixels` or `snapshots/step{step:07d}`. Every set of a
split stores its rows in the shard (manifest) order; subsampled sets hold a subset of those rows.

Extraction streams each split's shards once and runs every extractor on each batch, so decoding is
paid once however many encoders are evaluated; with a train cap only the kept samples are decoded.
Stored images that are not already the encoder's `img_size` square (photos kept at ~256 px, mixed
sizes) are resized and centre-cropped to it (`crop_ratio`, 0.875 = the usual 256 → 224); model-sized
images (Fashion-MNIST) are used as stored.
`precision="bf16"` runs the encoder under bf16 autocast (pooled features returned in float32): ~1.5x
faster on an idle CPU with AVX512-BF16, relative feature error ~4e-4 (bench/eval.md); `auto` picks it
on CUDA only (see `resolve_precision`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pipeline.data import remote
from pipeline.data.loader import eval_loader
from pipeline.data.shards import read_manifest
from pipeline.data.sources import stratified_split
from pipeline.data.transforms import CenterCrop
from pipeline.ijepa.export import load_encoder, random_encoder

FEATURES_DIR = Path("data/features")
SPLITS = ("train", "val", "test")


@dataclass
class FeatureSet:
    """Features of one split under one feature extractor, with labels and sample keys (row-aligned)."""

    features: np.ndarray
    labels: np.ndarray
    keys: np.ndarray

    def __post_init__(self) -> None:
        self.features = np.ascontiguousarray(self.features, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.keys = np.asarray(self.keys, dtype=str)
        if not len(self.features) == len(self.labels) == len(self.keys) or self.features.ndim != 2:
            raise ValueError(
                f"features {self.features.shape}, labels {self.labels.shape} and keys {self.keys.shape} disagree"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def subset(self, idx: np.ndarray) -> FeatureSet:
        return FeatureSet(self.features[idx], self.labels[idx], self.keys[idx])

    def select_keys(self, keys: Iterable[str]) -> FeatureSet:
        """The rows whose key is in `keys`, in this set's order; every key must be present."""
        wanted = set(keys)
        mask = np.isin(self.keys, list(wanted))
        if mask.sum() != len(wanted):
            raise KeyError(f"{len(wanted) - int(mask.sum())} requested keys are not in this feature set")
        return self.subset(np.flatnonzero(mask))

    def save(self, path: Path) -> None:
        """Write an .npz atomically (temp file + rename)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, features=self.features, labels=self.labels, keys=self.keys)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> FeatureSet:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["features"], z["labels"], z["keys"])


@dataclass
class Extractor:
    """One feature source: `model=None` means raw pixels (area-averaged to `raw_size` when larger);
    `keep` restricts it to a subset of keys."""

    name: str
    model: nn.Module | None = None
    keep: frozenset[str] | None = None
    raw_size: int | None = None


def raw_pixels(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Flattened pixels [B, C*H*W] of images [B, C, H, W]; images larger than `size` are area-averaged
    to `size` x `size` first (None: as they are)."""
    if size is not None and max(x.shape[-2:]) > size:
        x = F.adaptive_avg_pool2d(x, (size, size))
    return x.flatten(1)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` → bf16 on CUDA, fp32 on CPU.

    Not bf16 on CPU even where it is native (AVX512-BF16 / AMX, ~1.5x faster): measured on the default
    Fashion-MNIST run, bf16 rounding of the features cost the random-init baseline 2.4 points of linear
    top-1 (79.9 → 77.5 %) and the trained encoder 0.7 (81.1 → 80.4 %), because the weakly regularised
    probe reads low-variance feature directions; that would overstate the encoder's margin."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" else "fp32"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pooled_features(model: nn.Module, x: torch.Tensor, last_layers: int = 1) -> torch.Tensor:
    """Average-pooled patch tokens [B, D * last_layers] of a timm VisionTransformer (no class token).

    Each of the last `last_layers` blocks' outputs goes through the final norm, then is averaged over
    its patch tokens; the pools are concatenated from the earliest to the last layer.
    """
    depth = len(model.blocks)  # type: ignore[arg-type]
    if not 1 <= last_layers <= depth:
        raise ValueError(f"last_layers={last_layers} but the encoder has {depth} blocks")
    if last_layers == 1:
        tokens = [model.forward_features(x)]  # type: ignore[operator]
        prefix = getattr(model, "num_prefix_tokens", 0)
        tokens = [tokens[0][:, prefix:]]
    else:
        tokens = model.forward_intermediates(  # type: ignore[operator]
            x, indices=last_layers, norm=True, output_fmt="NLC", intermediates_only=True
        )
    return torch.cat([t.float().mean(dim=1) for t in tokens], dim=1)


def extract(
    batches: Iterable[Sequence],
    extractors: Sequence[Extractor],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    last_layers: int = 1,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    total: int | None = None,
    desc: str = "features",
) -> dict[str, FeatureSet]:
    """Run every extractor over one pass of `batches` of (images in [0,1] [B,C,H,W], labels[, keys]).

    Images are normalised `(x - mean) / std` per channel before the encoder (and for raw pixels).
    Batches without keys get keys "0", "1", ... in order. `total` (number of batches) only sizes the
    progress bar. Returns {extractor name: FeatureSet}.
    """
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32, bf16 or auto, got {precision!r}")
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    for ex in extractors:
        if ex.model is not None:
            ex.model.to(device).eval()
    parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {ex.name: [] for ex in extractors}
    seen = 0
    with torch.inference_mode():
        for batch in tqdm(batches, total=total, desc=desc, unit="batch", disable=None):
            images, labels = batch[0], np.asarray(batch[1], dtype=np.int64)
            keys = np.asarray(batch[2] if len(batch) > 2 else [str(seen + i) for i in range(len(labels))], dtype=str)
            seen += len(labels)
            x = (images.to(device, torch.float32) - mean_t) / std_t
            for ex in extractors:
                if ex.keep is None:
                    rows = np.arange(len(labels))
                else:
                    rows = np.array([i for i, k in enumerate(keys) if k in ex.keep], dtype=np.int64)
                if not len(rows):
                    continue
                xb = x if len(rows) == len(labels) else x[torch.from_numpy(rows).to(device)]
                if ex.model is None:
                    feats = raw_pixels(xb, ex.raw_size)
                else:
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                        feats = pooled_features(ex.model, xb, last_layers)
                parts[ex.name].append((feats.float().cpu().numpy(), labels[rows], keys[rows]))
    out = {}
    for ex in extractors:
        if not parts[ex.name]:
            raise ValueError(f"extractor {ex.name!r} saw no samples (empty split or no kept key present)")
        f, y, k = (np.concatenate(c) for c in zip(*parts[ex.name], strict=True))
        out[ex.name] = FeatureSet(f, y, k)
    return out


def split_batches(
    shard_dir: Path | str,
    batch_size: int,
    keep: frozenset[str] | None = None,
    *,
    img_size: int | None = None,
    crop_ratio: float = 0.875,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """Ordered (images in [0,1], labels, keys) batches of one split (`pipeline.data.loader.eval_loader`):
    with `keep`, only the kept samples are decoded (in shard order); with `img_size`, images not already
    that square are resized (shorter side to img_size / crop_ratio) and centre-cropped to it."""
    transform = CenterCrop(img_size, crop_ratio) if img_size is not None else None
    yield from eval_loader(shard_dir, batch_size, keep=keep, transform=transform)


def feature_path(root: Path, set_name: str, split: str) -> Path:
    return Path(root) / set_name / f"{split}.npz"


def snapshot_set(step: int) -> str:
    return f"snapshots/step{step:07d}"


def load_features(root: Path | str, set_name: str, splits: Sequence[str] = SPLITS) -> dict[str, FeatureSet]:
    """{split: FeatureSet} of one cached set, with a hint when the cache is missing."""
    root = Path(root)
    out = {}
    for split in splits:
        path = feature_path(root, set_name, split)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run `dvc repro features` (stage features writes {root})")
        out[split] = FeatureSet.load(path)
    return out


def read_index(root: Path | str) -> dict:
    path = Path(root) / "index.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `dvc repro features`")
    return json.loads(path.read_text())


def write_cache(root: Path | str, sets: dict[str, dict[str, FeatureSet]], index: dict) -> None:
    """Write {set: {split: FeatureSet}} and index.json into a staging dir, then swap it into `root`."""
    root = Path(root)
    staging = root.with_name(root.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    for set_name, by_split in sets.items():
        for split, fs in by_split.items():
            fs.save(feature_path(staging, set_name, split))
    (staging / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    old = root.with_name(root.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if root.exists():
        os.replace(root, old)
    os.replace(staging, root)
    shutil.rmtree(old, ignore_errors=True)


def subset_keys(keys: Sequence[str], labels: Sequence[int], n: int | None, seed: int) -> frozenset[str] | None:
    """A seeded class-stratified subset of `n` keys (None = keep all, also when n >= len(keys))."""
    if n is None or n >= len(keys):
        return None
    idx = stratified_split(np.asarray(labels), n, seed)[0]
    return frozenset(np.asarray(keys)[idx].tolist())


def build_cache(
    encoder_path: Path | str,
    shards_root: Path | str,
    out_dir: Path | str = FEATURES_DIR,
    *,
    manifest: Path | str | None = None,
    snapshots_dir: Path | str | None = None,
    last_layers: int = 1,
    batch_size: int = 512,
    random_init_seed: int = 0,
    max_train: int | None = None,
    snapshot_max_images: int | None = None,
    subset_seed: int = 0,
    precision: str = "auto",
    device: str = "auto",
    crop_ratio: float = 0.875,
    raw_pixels_size: int | None = 32,
) -> tuple[dict, dict]:
    """Extract every cached set (module docstring) from the shards and write `out_dir`.

    Returns (index, timing). The index (written as index.json) holds only what the features are, so
    the same inputs give a byte-identical cache and DVC does not re-run the eval stages after a forced
    re-extraction; the timing (`wall_s`, `encoder_images`, `encoder_images_per_s`) is returned apart.

    `max_train` caps the train split of every set (seeded, class-stratified, same keys for all sets);
    `crop_ratio`: the resize + centre crop of images not already the encoder's size (module docstring);
    `raw_pixels_size`: the side the raw-pixel baseline is area-averaged to when images are larger.
    `snapshot_max_images` caps each split of the snapshot sets (a subset of the sets' keys), so the
    accuracy-vs-step curve costs a fraction of a full extraction. Subsets need the manifest.
    `shards_root`: the folder of {train,val,test}/*.tar, or its URL in object storage; `IJEPA_SHARD_URL`,
    when set, replaces it (streamed, never copied: pipeline/data/remote.py).
    """
    start = time.perf_counter()
    shards_root = remote.shard_root(shards_root)
    encoder = load_encoder(encoder_path)
    meta = encoder.ijepa_meta
    norm = meta["normalization"]
    img_size = int(meta["timm_kwargs"]["img_size"])
    snapshots = []
    if snapshots_dir is not None and (Path(snapshots_dir) / "index.json").is_file():
        entries = json.loads((Path(snapshots_dir) / "index.json").read_text())
        # what a snapshot is, not how long it took (its `wall_s` would make the cache run-dependent)
        snapshots = [
            {"file": e["file"], "step": int(e["step"]), "epoch": e.get("epoch"), "set": snapshot_set(int(e["step"]))}
            for e in sorted(entries, key=lambda e: e["step"])
        ]
    rows = read_manifest(Path(manifest)) if manifest is not None and Path(manifest).is_file() else None
    if rows is None and (max_train is not None or (snapshots and snapshot_max_images is not None)):
        raise FileNotFoundError(f"max_train / snapshot_max_images need the manifest, not found: {manifest}")
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    base = [Extractor("encoder", encoder), Extractor("random_init", random_encoder(meta, random_init_seed)),
            Extractor("raw_pixels", raw_size=raw_pixels_size)]  # fmt: skip
    snap_models = [load_encoder(Path(snapshots_dir) / s["file"]) for s in snapshots]  # type: ignore[arg-type]
    sets: dict[str, dict[str, FeatureSet]] = {}
    split_sizes: dict[str, int] = {}
    images = 0
    for split in SPLITS:
        split_rows = [r for r in rows if r["split"] == split] if rows is not None else None
        keep = snap_keep = None
        if split_rows is not None:
            keys, labels = [r["key"] for r in split_rows], [int(r["label"]) for r in split_rows]
            keep = subset_keys(keys, labels, max_train, subset_seed) if split == "train" else None
            if keep is not None:
                keys, labels = zip(*[(k, y) for k, y in zip(keys, labels, strict=True) if k in keep], strict=True)
            snap_keep = subset_keys(keys, labels, snapshot_max_images, subset_seed + 1)
            if snap_keep is None:
                snap_keep = keep
        extractors = [replace(e, keep=keep) for e in base]
        extractors += [Extractor(s["set"], m, snap_keep) for s, m in zip(snapshots, snap_models, strict=True)]
        total = -(-len(keep or split_rows) // batch_size) if split_rows is not None else None
        batches = split_batches(remote.join(shards_root, split), batch_size, keep, img_size=img_size,
                                crop_ratio=crop_ratio)  # fmt: skip
        out = extract(batches, extractors, norm["mean"], norm["std"],
                      last_layers=last_layers, precision=precision, device=dev, total=total, desc=split)  # fmt: skip
        for name, fs in out.items():
            sets.setdefault(name, {})[split] = fs
        split_sizes[split] = len(split_rows) if split_rows is not None else len(out["raw_pixels"])
        images += sum(len(out[e.name]) for e in extractors if e.model is not None)
    wall = time.perf_counter() - start
    index = {
        "format": "ijepa-features/1",
        "encoder": {"path": str(encoder_path), "step": meta.get("step"), "epoch": meta.get("epoch")},
        "normalization": norm,
        "last_layers": last_layers,
        "precision": precision,
        "split_sizes": split_sizes,
        "subset": {"max_train": max_train, "snapshot_max_images": snapshot_max_images, "seed": subset_seed},
        "sets": {
            name: {"dim": by["train"].dim, "count": {s: len(f) for s, f in by.items()}} for name, by in sets.items()
        },
        "snapshots": snapshots,
    }
    if rows is None or any((r["width"], r["height"]) != (str(img_size),) * 2 for r in rows):
        index["eval_crop"] = {"size": img_size, "ratio": crop_ratio}  # only where images were resized
    if raw_pixels_size is not None and img_size > raw_pixels_size:
        index["raw_pixels_size"] = raw_pixels_size  # only where the raw baseline was downsampled
    write_cache(out_dir, sets, index)
    timing = {"wall_s": round(wall, 3), "encoder_images": images, "encoder_images_per_s": round(images / wall, 1)}
    return index, timing
