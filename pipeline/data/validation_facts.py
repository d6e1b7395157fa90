"""Facts for the data-validation gate, gathered in one pass over the shards.

`collect_facts` re-reads every tar under the shard directory (one shard per task, in parallel,
streaming: pipeline/data/validation_read.py), decodes each sample once and joins what it finds with
the manifest into four pandas frames that the great-expectations suite (`pipeline/data/validation.py`)
then checks:

- `manifest`: the manifest as read (every column a string, empty cells null) plus `shard_split`,
  the directory named by the `shard` column;
- `samples`: one row per key found in a tar or in the manifest: membership both ways, whether the
  sample decodes, whether hash / size / mode / label / shard agree with the manifest, cross-split
  leakage (decoded-pixel hash seen in another split) and per-image pixel statistics (for the pixel
  sample);
- `shards`: one row per tar on disk or named by the manifest: presence both ways, readability and
  sample counts (tar vs manifest);
- `splits`: one row per checked split: size, class balance, duplicate rate, pixel mean/std and the
  fraction of constant images.

Shards are identified by `split/name.tar` (the last two parts of the manifest's `shard` path, or the
path relative to the shard directory), so any shard directory can be checked against its manifest.
It also computes the per-channel normalisation of the train split (pixel values in [0, 1]). The
samples frame holds small facts per image (no pixels), so memory grows only by those rows.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.shards import MANIFEST_COLUMNS
from pipeline.data.validation_read import SAMPLE_FIELDS, ShardRead, pixel_totals, read_shard
from pipeline.data.workers import ordered_map


class ValidationInputError(RuntimeError):
    """The shard directory or the manifest cannot be read at all (nothing to validate)."""


@dataclass
class Facts:
    """The frames the expectations run over, plus derived numbers for the report."""

    manifest: pd.DataFrame
    samples: pd.DataFrame
    shards: pd.DataFrame
    splits: pd.DataFrame
    num_classes: int
    normalization: dict[str, list[float]] | None
    read_s: float = 0.0
    manifest_counts: dict[str, int] = field(default_factory=dict)  # split -> manifest rows
    pixel_images: dict[str, int] = field(default_factory=dict)  # split -> images in the pixel sample
    extra: dict = field(default_factory=dict)


def shard_ident(path: str | None) -> str | None:
    """`split/name.tar` for a manifest `shard` path (its last two parts)."""
    if not isinstance(path, str) or not path:
        return None
    return "/".join(path.replace("\\", "/").rstrip("/").split("/")[-2:])


def _read_all(jobs: list[tuple[str, str, float, int]], workers: int) -> list[ShardRead]:
    with ordered_map(lambda i: read_shard(jobs[i]), len(jobs), workers, chunk=1) as reads:
        return list(reads)


def _bool_or_none(values: pd.Series, valid: pd.Series) -> pd.Series:
    """Object column: the boolean where `valid`, None elsewhere (GX skips nulls in map checks)."""
    return pd.Series([bool(v) if ok else None for v, ok in zip(values, valid, strict=True)], index=values.index,
                     dtype=object)  # fmt: skip


def _read_manifest(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ValidationInputError(f"manifest {path} not found (run `dvc repro shard` first)")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=True)
    except (ValueError, OSError) as exc:
        raise ValidationInputError(f"manifest {path} cannot be read as CSV: {exc}") from None


def _samples_frame(tar: pd.DataFrame, man: pd.DataFrame) -> pd.DataFrame:
    cols = ["key", "split", "ident", "label", "width", "height", "mode", "sha256"]
    first = man.dropna(subset=["key"]).drop_duplicates("key")[cols]
    s = tar.merge(first, on="key", how="outer", indicator=True, sort=False)
    s["in_manifest"] = s["_merge"] != "left_only"
    s["in_shards"] = s["_merge"] != "right_only"
    both = s["in_manifest"] & s["in_shards"]
    decoded = both & (s["decodes"] == True)  # noqa: E712 - object column holding True/False/None
    s["tar_key"] = s["key"].where(s["in_shards"], None)
    has = {m: s[f"has_{m}"].fillna(False).astype(bool) for m in ("image", "cls", "json")}
    s["members_complete"] = _bool_or_none(has["image"] & has["cls"] & has["json"], s["in_shards"])
    s["decodes"] = _bool_or_none(s["decodes"], s["in_shards"] & has["image"])
    s["meta_matches"] = _bool_or_none(s["json_ok"], s["json_ok"].notna())
    s["sha256_matches"] = _bool_or_none(s["image_sha256"] == s["sha256"], both & s["image_sha256"].notna())
    s["size_matches"] = _bool_or_none(
        (s["tar_width"].astype("Int64").astype(str) == s["width"]) & (s["tar_height"].astype("Int64").astype(str)
                                                                       == s["height"]), decoded)  # fmt: skip
    s["mode_matches"] = _bool_or_none(s["tar_mode"] == s["mode"], decoded)
    s["label_matches"] = _bool_or_none(s["cls"] == s["label"], both & s["cls"].notna())
    s["shard_matches"] = _bool_or_none(s["tar_shard"] == s["ident"], both)
    s["split"] = s["tar_shard"].map(lambda i: i.split("/")[0] if isinstance(i, str) and "/" in i else None).where(
        s["in_shards"], s["split"])  # fmt: skip
    seen = s[s["decodes"] == True].groupby("pixel_hash")["split"].nunique()  # noqa: E712
    s["no_leakage"] = _bool_or_none(s["pixel_hash"].map(seen) <= 1, s["decodes"] == True)  # noqa: E712
    s = s.drop(columns=["_merge", "has_image", "has_cls", "has_json", "json_ok"]).reset_index(drop=True)
    return s.rename(columns={"ident": "manifest_shard"})


def _shards_frame(reads: list[ShardRead], man: pd.DataFrame, on_disk: set[str]) -> pd.DataFrame:
    man_counts = man["ident"].value_counts()
    by_ident = {r.ident: r for r in reads}
    rows = []
    for ident in sorted(on_disk | set(man_counts.index)):
        r = by_ident.get(ident)
        rows.append({
            "shard": ident, "on_disk": ident in on_disk, "in_manifest": ident in man_counts.index,
            "readable": None if r is None else r.readable, "error": None if r is None else r.error,
            "tar_count": float(len(r.rows)) if r is not None and r.readable else np.nan,
            "manifest_count": float(man_counts.get(ident, np.nan)),
        })  # fmt: skip
    frame = pd.DataFrame(rows, columns=["shard", "on_disk", "in_manifest", "readable", "error", "tar_count",
                                        "manifest_count"])  # fmt: skip
    frame["readable"] = frame["readable"].astype(object).where(frame["readable"].notna(), None)
    return frame


def _splits_frame(s: pd.DataFrame, reads: list[ShardRead], splits: list[str], num_classes: int) -> pd.DataFrame:
    rows = []
    for split in splits:
        in_split = s[s["in_shards"] & (s["split"] == split)]
        dec = in_split[in_split["decodes"] == True]  # noqa: E712
        labels = pd.to_numeric(in_split["cls"], errors="coerce").dropna().astype(int)
        counts = np.array([(labels == c).sum() for c in range(num_classes)], dtype=float)
        mean_count = counts.mean() if num_classes else 0.0
        totals = pixel_totals(reads, split)
        if totals is not None:
            n, s1, s2 = totals
            mean = float(s1.sum() / n.sum())
            std = float(np.sqrt(max(s2.sum() / n.sum() - mean**2, 0.0)))
        else:
            mean = std = np.nan
        rows.append({
            "split": split, "count": len(in_split),
            "class_min_ratio": float(counts.min() / mean_count) if mean_count > 0 else 0.0,
            "class_min_count": float(counts.min()) if num_classes else 0.0,
            "duplicate_rate": float(1 - dec["pixel_hash"].nunique() / len(dec)) if len(dec) else 0.0,
            "pixel_mean": mean, "pixel_std": std,
            "constant_fraction": float(dec["constant"].astype(bool).mean()) if len(dec) else np.nan,
        })  # fmt: skip
    return pd.DataFrame(rows)


def _normalization(reads: list[ShardRead]) -> dict[str, list[float]] | None:
    totals = pixel_totals(reads, "train")
    if totals is None:
        return None
    n, s1, s2 = totals
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
    return {"mean": [round(float(v), 6) for v in mean], "std": [round(float(v), 6) for v in std]}


def collect_facts(
    shard_dir: Path,
    manifest_path: Path,
    splits: list[str],
    num_classes: int | None = None,
    workers: int | None = None,
    pixel_sample: int | None = None,
    pixel_seed: int = 0,
) -> Facts:
    """Re-read every shard under `shard_dir`, join with the manifest, return the frames to check.

    `num_classes` None: the number of distinct `class_name`s in the manifest. `pixel_sample`: images
    per split whose pixels feed the statistics (a seeded sample, see validation_read; None: all).
    """
    start = time.perf_counter()
    shard_dir = Path(shard_dir)
    if not shard_dir.is_dir():
        raise ValidationInputError(f"shard directory {shard_dir} does not exist (run `dvc repro shard` first)")
    raw = _read_manifest(Path(manifest_path))
    manifest = raw.copy()
    if "shard" in manifest:
        idents = manifest["shard"].map(shard_ident)
        manifest["shard_split"] = idents.map(
            lambda i: (i.split("/")[0] if "/" in i else "") if isinstance(i, str) else None
        )
    man = raw.copy()
    for col in MANIFEST_COLUMNS:
        if col not in man:
            man[col] = None
    man["ident"] = man["shard"].map(shard_ident)
    if num_classes is None:
        labels = pd.to_numeric(man["label"], errors="coerce")
        num_classes = int(man["class_name"].nunique()) or (int(labels.max()) + 1 if labels.notna().any() else 0)
    counts = {str(k): int(v) for k, v in man["split"].value_counts().items()}
    on_disk = {p.relative_to(shard_dir).as_posix(): p for p in sorted(shard_dir.rglob("*.tar"))}
    jobs = [(str(p), ident, _rate(pixel_sample, counts.get(ident.split("/")[0], 0)), pixel_seed)
            for ident, p in on_disk.items()]  # fmt: skip
    reads = _read_all(jobs, workers or os.cpu_count() or 1)
    tar = pd.DataFrame([row for r in reads for row in r.rows], columns=SAMPLE_FIELDS)
    sampled: dict[str, int] = {}
    for r in reads:
        sampled[r.ident.split("/")[0]] = sampled.get(r.ident.split("/")[0], 0) + r.sampled
    samples = _samples_frame(tar, man)
    return Facts(
        manifest=manifest,
        samples=samples,
        shards=_shards_frame(reads, man, set(on_disk)),
        splits=_splits_frame(samples, reads, splits, num_classes),
        num_classes=num_classes,
        normalization=_normalization(reads),
        read_s=time.perf_counter() - start,
        manifest_counts=counts,
        pixel_images=sampled,
    )


def _rate(pixel_sample: int | None, count: int) -> float:
    """Share of a split's images in the pixel sample: all when the split is not larger than the sample."""
    return 1.0 if pixel_sample is None or count <= pixel_sample else pixel_sample / count
