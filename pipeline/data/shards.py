"""Deterministic WebDataset shard writer, the manifest and the shard report.

`write_shards` turns a `SourceDataset` into `data/shards/{split}/{split}-NNNNNN.tar` plus
`data/manifest.csv`. Tar headers are fixed (mtime 0, root owner, mode 0444, sorted members), the
sample order comes from the seeded split, and PNG encoding is lossless and deterministic, so the
same source and params give byte-identical shards. Everything is written into a staging directory
and moved into place only when complete: a crash never leaves a half-written shard behind.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing as mp
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm
from webdataset import TarWriter

from pipeline.atomic import write_json_atomic
from pipeline.config import DataParams
from pipeline.data.sources import SPLITS, CorruptImageError, SourceDataset, SourceItem

MANIFEST_COLUMNS = ["key", "split", "shard", "label", "class_name", "width", "height", "mode", "sha256"]


@dataclass
class ShardResult:
    """What `write_shards` produced: manifest rows, shard files and skipped inputs."""

    rows: list[dict] = field(default_factory=list)
    shards: dict[str, list[Path]] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    wall_s: float = 0.0


def encode_png(img: Image.Image) -> bytes:
    """Lossless, deterministic PNG bytes for a PIL image."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def sample_key(split: str, n: int) -> str:
    return f"{split}-{n:07d}"


_TAR_OVERHEAD = 3 * 1024  # three members, each a 512-byte header plus padding


@dataclass
class _Encoded:
    source_id: str
    label: int
    png: bytes
    sha256: str
    width: int
    height: int
    mode: str


def _encode_item(item: SourceItem) -> _Encoded | CorruptImageError:
    try:
        img = item.load()
    except CorruptImageError as err:
        return err
    png = encode_png(img)
    return _Encoded(item.source_id, item.label, png, hashlib.sha256(png).hexdigest(), img.width, img.height, img.mode)


def _plan_shards(encoded: list[_Encoded], max_count: int, max_bytes: int) -> list[list[int]]:
    """Cut a split's samples into consecutive shards by count and (approximate tar) size."""
    plans: list[list[int]] = []
    size = 0
    for i, enc in enumerate(encoded):
        cost = len(enc.png) + _TAR_OVERHEAD
        if not plans or len(plans[-1]) >= max_count or (plans[-1] and size + cost > max_bytes):
            plans.append([])
            size = 0
        plans[-1].append(i)
        size += cost
    return plans


def _write_tar(job: tuple[Path, list[dict]]) -> Path:
    """Write one tar atomically: a temp file, fsync, then rename."""
    path, samples = job
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        with TarWriter(fh, user="", group="", mode=0o444, mtime=0, encoder=False) as tar:
            for sample in samples:
                tar.write(sample)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def write_shards(
    dataset: SourceDataset, params: DataParams, out_dir: Path, manifest_path: Path, workers: int | None = None
) -> ShardResult:
    """Write every split of `dataset` as WebDataset tars under `out_dir` and the manifest CSV.

    PNG encoding and tar writing run in `workers` processes (default: all cores); the output does
    not depend on the worker count.
    """
    start = time.perf_counter()
    result = ShardResult(skipped=[{"path": e.path, "split": None, "reason": e.reason} for e in dataset.rejected])
    staging = out_dir.with_name(out_dir.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    workers = workers or os.cpu_count() or 1
    total = sum(len(v) for v in dataset.splits.values())
    with (
        mp.get_context("fork").Pool(workers) as pool,
        tqdm(total=total, desc="shard", unit="img", disable=None) as bar,
    ):
        jobs: list[tuple[Path, list[dict]]] = []
        for split in SPLITS:
            (staging / split).mkdir(parents=True)
            encoded: list[_Encoded] = []
            for enc in pool.imap(_encode_item, dataset.splits[split], 256):
                bar.update(1)
                if isinstance(enc, CorruptImageError):
                    if params.on_corrupt == "fail":
                        raise enc
                    result.skipped.append({"path": enc.path, "split": split, "reason": enc.reason})
                    continue
                encoded.append(enc)
            result.shards[split] = []
            for s, members in enumerate(_plan_shards(encoded, params.shard_max_count, params.shard_max_bytes)):
                name = f"{split}-{s:06d}.tar"
                result.shards[split].append(out_dir / split / name)
                samples = []
                for n in members:
                    enc, key = encoded[n], sample_key(split, n)
                    meta = {"source_id": enc.source_id, "sha256": enc.sha256, "label": enc.label,
                            "class_name": dataset.classes[enc.label]}  # fmt: skip
                    samples.append({"__key__": key, "png": enc.png, "cls": str(enc.label).encode(),
                                    "json": json.dumps(meta, sort_keys=True).encode()})  # fmt: skip
                    result.rows.append({
                        "key": key, "split": split, "shard": (out_dir / split / name).as_posix(),
                        "label": enc.label, "class_name": dataset.classes[enc.label], "width": enc.width,
                        "height": enc.height, "mode": enc.mode, "sha256": enc.sha256,
                    })  # fmt: skip
                jobs.append((staging / split / name, samples))
        for _ in tqdm(pool.imap_unordered(_write_tar, jobs), total=len(jobs), desc="write", unit="shard", disable=None):
            pass
    write_manifest(result.rows, staging / "manifest.csv.tmp")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging / "manifest.csv.tmp", manifest_path)
    os.replace(staging, out_dir)
    result.wall_s = time.perf_counter() - start
    return result


def write_manifest(rows: list[dict], path: Path) -> None:
    """Write manifest rows as CSV (atomically when `path` is a temp file the caller renames)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def read_manifest(path: Path) -> list[dict]:
    """Read the manifest CSV, checking its columns."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = set(MANIFEST_COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: manifest lacks columns {sorted(missing)}")
        return list(reader)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def shard_report(dataset: SourceDataset, result: ShardResult, manifest_path: Path) -> dict:
    """The `reports/shard.json` content: counts per split and class, shards, bytes, speed, skips."""
    report: dict = {"source": dataset.name, "root": dataset.root, "num_classes": len(dataset.classes)}
    report["classes"] = dataset.classes
    report["count"] = {s: sum(1 for r in result.rows if r["split"] == s) for s in SPLITS}
    report["count"]["total"] = len(result.rows)
    per_class = {s: Counter(r["class_name"] for r in result.rows if r["split"] == s) for s in SPLITS}
    report["class_count"] = {s: {c: per_class[s].get(c, 0) for c in dataset.classes} for s in SPLITS}
    report["shards"] = {s: len(p) for s, p in result.shards.items()}
    report["shards"]["total"] = sum(len(p) for p in result.shards.values())
    all_shards = [p for s in SPLITS for p in result.shards[s]]
    report["bytes"] = sum(p.stat().st_size for p in all_shards)
    report["wall_s"] = round(result.wall_s, 3)
    report["images_per_s"] = round(len(result.rows) / max(result.wall_s, 1e-9), 1)
    report["manifest_sha256"] = file_sha256(manifest_path)
    report["shard_sha256"] = {p.as_posix(): file_sha256(p) for p in all_shards}
    report["skipped_count"] = len(result.skipped)
    report["skipped"] = result.skipped
    return report


def shard_dataset(
    params: DataParams, out_dir: Path, manifest_path: Path, report_path: Path, workers: int | None = None
) -> dict:
    """Load the configured source, write shards + manifest, write and return the shard report."""
    from pipeline.data.sources import load_source

    dataset = load_source(params)
    result = write_shards(dataset, params, out_dir, manifest_path, workers=workers)
    report = shard_report(dataset, result, manifest_path)
    write_json_atomic(report_path, report)
    return report
