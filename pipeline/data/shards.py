"""Deterministic WebDataset shard writer, the manifest and the shard report.

`write_shards` turns a `SourceDataset` into `data/shards/{split}/{split}-NNNNNN.tar` plus
`data/manifest.csv`, streaming: items are encoded in a worker pool (pipeline/data/shard_writer.py),
handed back in order, written into the open tar of their split and listed in the manifest at once,
so memory stays flat whatever the dataset size. Tar headers are fixed (mtime 0, root owner, mode
0444), the sample order comes from the seeded split and encoding is deterministic, so the same
source and params give byte-identical shards for any worker count. Everything is written into a
staging directory and moved into place only when complete (and removed on failure): a crash never
leaves a half-written shard behind.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from pipeline.atomic import write_json_atomic
from pipeline.config import DataParams
from pipeline.data.images import MAX_REPORTED, CorruptImageError, UnusableInputsError
from pipeline.data.shard_writer import Encoded, ShardSink, encode_split, sample_cost, sample_dict
from pipeline.data.sources import SPLITS, SourceDataset
from pipeline.timings import per_s, timings_path, write_timings

__all__ = ["MANIFEST_COLUMNS", "ShardResult", "read_manifest", "shard_dataset", "write_shards"]

MANIFEST_COLUMNS = ["key", "split", "shard", "label", "class_name", "width", "height", "mode", "sha256"]


@dataclass
class ShardResult:
    """What `write_shards` produced: counts, shard files and their hashes, skipped inputs."""

    count: dict[str, Counter] = field(default_factory=dict)  # split -> class name -> samples
    shards: dict[str, list[Path]] = field(default_factory=dict)
    shard_sha256: dict[str, str] = field(default_factory=dict)
    bytes: int = 0
    stored: Counter = field(default_factory=Counter)  # sample extension -> samples
    kept: int = 0  # samples that store the source file's own bytes
    skipped: list[dict] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def images(self) -> int:
        return sum(sum(c.values()) for c in self.count.values())


def sample_key(split: str, n: int) -> str:
    return f"{split}-{n:07d}"


def _store(enc: Encoded, split: str, sink: ShardSink, rows: csv.DictWriter, result: ShardResult,
           classes: list[str]) -> None:  # fmt: skip
    """Append one encoded sample to its split's tars and the manifest, and count it."""
    key, class_name = sample_key(split, sum(result.count[split].values())), classes[enc.label]
    shard = sink.add(sample_dict(key, enc, class_name), sample_cost(enc))
    rows.writerow({
        "key": key, "split": split, "shard": shard.as_posix(), "label": enc.label, "class_name": class_name,
        "width": enc.width, "height": enc.height, "mode": enc.mode, "sha256": enc.sha256,
    })  # fmt: skip
    result.count[split][class_name] += 1
    result.stored[enc.ext] += 1
    result.kept += enc.kept


def write_shards(
    dataset: SourceDataset, params: DataParams, out_dir: Path, manifest_path: Path, workers: int | None = None
) -> ShardResult:
    """Write every split of `dataset` as WebDataset tars under `out_dir` and the manifest CSV.

    Encoding runs in `workers` processes (default: all cores; 1: in this process); the output does
    not depend on the worker count. `data.on_corrupt: fail` raises `UnusableInputsError` listing every
    unusable input (the source's and those that fail to decode; after the first one the rest is only
    scanned, up to `MAX_REPORTED`); nothing is moved into place and the staging directory is removed.
    """
    start = time.perf_counter()
    result = ShardResult(skipped=[{"path": e.path, "split": None, "reason": e.reason} for e in dataset.rejected])
    fail = params.on_corrupt == "fail"
    unusable: list[CorruptImageError] = list(dataset.rejected) if fail else []
    if len(unusable) >= MAX_REPORTED:
        raise UnusableInputsError(unusable[:MAX_REPORTED], complete=False)
    staging = out_dir.with_name(out_dir.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    workers = workers or os.cpu_count() or 1
    total = sum(len(v) for v in dataset.splits.values())
    sink: ShardSink | None = None
    try:
        with (
            tqdm(total=total, desc="shard", unit="img", disable=None) as bar,
            open(staging / "manifest.csv.tmp", "w", newline="") as manifest,
        ):
            rows = csv.DictWriter(manifest, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
            rows.writeheader()
            for split in SPLITS:
                bar.set_postfix_str(split)
                (staging / split).mkdir()
                sink = ShardSink(staging / split, out_dir / split, split, params.shard_max_count,
                                 params.shard_max_bytes)  # fmt: skip
                result.count[split] = Counter()
                with encode_split(dataset.splits[split], params, workers) as encoded:
                    for enc in encoded:
                        bar.update(1)
                        if isinstance(enc, CorruptImageError):
                            if fail:
                                unusable.append(enc)
                                if len(unusable) >= MAX_REPORTED:
                                    raise UnusableInputsError(unusable, complete=False)
                            else:
                                result.skipped.append({"path": enc.path, "split": split, "reason": enc.reason})
                            continue
                        if unusable:  # failing anyway: only look for more unusable inputs
                            continue
                        _store(enc, split, sink, rows, result, dataset.classes)
                sink.close()
                result.shards[split], result.bytes = sink.paths, result.bytes + sink.bytes
                result.shard_sha256.update(sink.digests)
            if unusable:
                raise UnusableInputsError(unusable)
    except BaseException:
        if sink is not None:
            sink.abort()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
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
    """The `reports/shard.json` content: counts per split and class, shards, bytes, encoding, skipped
    inputs and removed duplicates (only what the inputs determine: the speed is in `shard_timing`)."""
    report: dict = {"source": dataset.name, "root": dataset.root, "num_classes": len(dataset.classes)}
    report["classes"] = dataset.classes
    report["count"] = {s: sum(result.count.get(s, Counter()).values()) for s in SPLITS}
    report["count"]["total"] = result.images
    report["class_count"] = {s: {c: result.count.get(s, Counter()).get(c, 0) for c in dataset.classes} for s in SPLITS}
    report["shards"] = {s: len(p) for s, p in result.shards.items()}
    report["shards"]["total"] = sum(len(p) for p in result.shards.values())
    report["bytes"] = result.bytes
    report["source_bytes"] = dataset.source_bytes
    report["bytes_ratio"] = round(result.bytes / dataset.source_bytes, 4) if dataset.source_bytes else None
    report["stored"] = {"png": result.stored.get("png", 0), "jpg": result.stored.get("jpg", 0), "kept": result.kept}
    report["manifest_sha256"] = file_sha256(manifest_path)
    report["shard_sha256"] = dict(result.shard_sha256)
    report["skipped_count"] = len(result.skipped)
    report["skipped"] = result.skipped
    report["duplicates_count"] = len(dataset.duplicates)
    report["duplicates"] = dataset.duplicates
    return report


def shard_dataset(
    params: DataParams, out_dir: Path, manifest_path: Path, report_path: Path, workers: int | None = None
) -> dict:
    """Load the configured source, write shards + manifest and the shard report (its timings beside it,
    pipeline/timings.py); returns the report plus the timings."""
    from pipeline.data.sources import load_source

    dataset = load_source(params, workers=workers)
    result = write_shards(dataset, params, out_dir, manifest_path, workers=workers)
    report = shard_report(dataset, result, manifest_path)
    write_json_atomic(report_path, report)
    timing = shard_timing(result)
    write_timings(timings_path(report_path), timing)
    return {**report, **timing}


def shard_timing(result: ShardResult) -> dict:
    """The run's wall time and images/s (reports/timings/shard.json)."""
    return {"wall_s": round(result.wall_s, 3), "images_per_s": per_s(result.images, result.wall_s)}
