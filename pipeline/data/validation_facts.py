"""Facts for the data-validation gate, gathered in one pass over the shards.

`collect_facts` re-reads every tar under the shard directory (one shard per task, in parallel),
decodes each sample and joins what it finds with the manifest into four pandas frames that the
great-expectations suite (`pipeline/data/validation.py`) then checks:

- `manifest`: the manifest as read (every column a string, empty cells null) plus `shard_split`,
  the directory named by the `shard` column;
- `samples`: one row per key found in a tar or in the manifest: membership both ways, whether the
  sample decodes, whether hash / size / mode / label / shard agree with the manifest, cross-split
  leakage (decoded-pixel hash seen in another split) and per-image pixel statistics;
- `shards`: one row per tar on disk or named by the manifest: presence both ways, readability and
  sample counts (tar vs manifest);
- `splits`: one row per expected split: size, class balance, duplicate rate, pixel mean/std and the
  fraction of constant images.

Shards are identified by `split/name.tar` (the last two parts of the manifest's `shard` path, or the
path relative to the shard directory), so any shard directory can be checked against its manifest.
It also computes the per-channel normalisation of the train split (pixel values in [0, 1]).
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import os
import re
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.data.shards import MANIFEST_COLUMNS

SAMPLE_FIELDS = [
    "key", "tar_shard", "has_png", "has_cls", "has_json", "decodes", "decode_error", "png_sha256",
    "pixel_hash", "tar_width", "tar_height", "tar_mode", "cls", "json_ok", "pixel_mean", "pixel_std", "constant",
]  # fmt: skip


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
    extra: dict = field(default_factory=dict)


@dataclass
class _ShardRead:
    ident: str
    readable: bool = True
    error: str | None = None
    rows: list[tuple] = field(default_factory=list)
    # channels -> [pixels per channel, per-channel sum, per-channel sum of squares]
    pixels: dict[int, list] = field(default_factory=dict)


def shard_ident(path: str | None) -> str | None:
    """`split/name.tar` for a manifest `shard` path (its last two parts)."""
    if not isinstance(path, str) or not path:
        return None
    return "/".join(path.replace("\\", "/").rstrip("/").split("/")[-2:])


class _NeedsTarfile(Exception):
    """The archive uses extended headers (pax / GNU long names): read it with `tarfile` instead."""


def _octal(field: bytes) -> int:
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise tarfile.HeaderError(f"bad octal header field {field!r}") from None


def _fast_members(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Regular-file members of a plain ustar archive held in memory (about 10x faster than tarfile).

    Checks every header's checksum and each member's length: a damaged archive raises TarError.
    """
    pos, end = 0, len(data)
    while pos + 512 <= end:
        header = data[pos : pos + 512]
        if header.count(0) == 512:
            return
        if _octal(header[148:156]) != sum(header[:148]) + 256 + sum(header[156:]):
            raise tarfile.HeaderError(f"bad header checksum at byte {pos}")
        size, kind = _octal(header[124:136]), header[156:157]
        if kind in (b"x", b"g", b"L", b"K"):
            raise _NeedsTarfile
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        if header[257:262] == b"ustar" and header[345] != 0:
            name = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") + "/" + name
        if pos + 512 + size > end:
            raise tarfile.ReadError(f"unexpected end of data in member {name}")
        if kind in (b"0", b"\0", b"7"):
            yield name, data[pos + 512 : pos + 512 + size]
        pos += 512 + (size + 511) // 512 * 512
    if pos < end:
        raise tarfile.ReadError(f"truncated header at byte {pos}")


def _tarfile_members(path: str) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile():
                fh = tar.extractfile(member)
                yield member.name, fh.read() if fh else b""


def _group_members(path: str, out: _ShardRead) -> dict[str, dict[str, bytes]]:
    """Tar members grouped into samples the webdataset way (key = path up to the basename's first
    dot). A damaged tar marks `out` unreadable; the samples read before the damage are kept."""
    groups: dict[str, dict[str, bytes]] = {}

    def add(members: Iterator[tuple[str, bytes]]) -> None:
        for name, body in members:
            slash = name.rfind("/") + 1
            stem, _, ext = name[slash:].partition(".")
            groups.setdefault(name[:slash] + stem, {})[ext] = body

    try:
        try:
            add(_fast_members(Path(path).read_bytes()))
        except _NeedsTarfile:
            groups.clear()
            add(_tarfile_members(path))
    except (tarfile.TarError, OSError, EOFError, UnicodeError) as exc:
        out.readable, out.error = False, f"{type(exc).__name__}: {exc}"[:200]
    return groups


def _sample_row(key: str, ident: str, members: dict[str, bytes]) -> tuple[list, np.ndarray | None]:
    png, cls, meta = members.get("png"), members.get("cls"), members.get("json")
    sha = hashlib.sha256(png).hexdigest() if png is not None else None
    label = cls.decode("ascii", "replace").strip() if cls is not None else None
    json_ok = None
    if meta is not None:
        try:
            info = json.loads(meta)
            json_ok = info.get("sha256") == sha and str(info.get("label")) == label
        except (ValueError, AttributeError):
            json_ok = False
    arr, decodes, error, phash, width, height, mode = (None,) * 7
    if png is not None:
        try:
            with Image.open(io.BytesIO(png), formats=["PNG"]) as im:  # the contract: members are PNG
                im.load()
                arr, mode, width, height = np.asarray(im), im.mode, im.width, im.height
            decodes = True
        except Exception as exc:  # any decoder failure means a corrupt sample; record why
            decodes, error = False, re.sub(r" ?<[^<>]* at 0x[0-9a-f]+>", "", f"{type(exc).__name__}: {exc}")[:200]
    if decodes:
        phash = hashlib.blake2b(f"{mode}{arr.shape}".encode() + arr.tobytes(), digest_size=16).hexdigest()
    row = [key, ident, png is not None, cls is not None, meta is not None, decodes, error, sha, phash,
           width, height, mode, label, json_ok, None, None, None]  # fmt: skip
    return row, arr


def _pixel_stats(out: _ShardRead, rows: list[list], arrays: list[np.ndarray | None], chunk: int = 512) -> None:
    """Per-image mean/std/constant into `rows`, per-channel pixel sums into `out.pixels` (vectorised)."""
    groups: dict[tuple, list[int]] = {}
    for i, arr in enumerate(arrays):
        if arr is not None:
            groups.setdefault((arr.shape, arr.dtype.str), []).append(i)
    for (shape, _), idx in groups.items():
        channels = 1 if len(shape) == 2 else shape[-1]
        scale = 65535.0 if arrays[idx[0]].dtype == np.uint16 else 255.0
        slot = out.pixels.setdefault(channels, [0, np.zeros(channels), np.zeros(channels)])
        for lo in range(0, len(idx), chunk):
            part = idx[lo : lo + chunk]
            x = np.stack([arrays[i] for i in part]).reshape(len(part), -1, channels).astype(np.float64) / scale
            means, stds = x.mean(axis=(1, 2)), x.std(axis=(1, 2))
            const = x.max(axis=(1, 2)) == x.min(axis=(1, 2))
            for j, i in enumerate(part):
                rows[i][14:17] = [float(means[j]), float(stds[j]), bool(const[j])]
            slot[0] += x.shape[0] * x.shape[1]
            slot[1] += x.sum(axis=(0, 1))
            slot[2] += np.square(x).sum(axis=(0, 1))


def read_shard(job: tuple[str, str]) -> _ShardRead:
    """Read one tar: one row per sample key (members grouped webdataset-style) and pixel sums."""
    path, ident = job
    out = _ShardRead(ident)
    groups = _group_members(path, out)
    decoded = [_sample_row(key, ident, members) for key, members in groups.items()]
    rows = [r for r, _ in decoded]
    _pixel_stats(out, rows, [a for _, a in decoded])
    out.rows = [tuple(r) for r in rows]
    return out


def _read_all(jobs: list[tuple[str, str]], workers: int) -> list[_ShardRead]:
    if workers <= 1 or len(jobs) <= 1:
        return [read_shard(j) for j in jobs]
    with mp.get_context("fork").Pool(min(workers, len(jobs))) as pool:
        return pool.map(read_shard, jobs, chunksize=1)


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
    has = {m: s[f"has_{m}"].fillna(False).astype(bool) for m in ("png", "cls", "json")}
    s["members_complete"] = _bool_or_none(has["png"] & has["cls"] & has["json"], s["in_shards"])
    s["decodes"] = _bool_or_none(s["decodes"], s["in_shards"] & has["png"])
    s["meta_matches"] = _bool_or_none(s["json_ok"], s["json_ok"].notna())
    s["sha256_matches"] = _bool_or_none(s["png_sha256"] == s["sha256"], both & s["png_sha256"].notna())
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
    s = s.drop(columns=["_merge", "has_png", "has_cls", "has_json", "json_ok"]).reset_index(drop=True)
    return s.rename(columns={"ident": "manifest_shard"})


def _shards_frame(reads: list[_ShardRead], man: pd.DataFrame, on_disk: set[str]) -> pd.DataFrame:
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


def _pixel_totals(reads: list[_ShardRead], split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Pooled (pixels per channel, sum, sum of squares) of a split, for its majority channel count."""
    per_c: dict[int, list] = {}
    for r in reads:
        if r.ident.split("/")[0] != split:
            continue
        for c, (n, s1, s2) in r.pixels.items():
            slot = per_c.setdefault(c, [0, np.zeros(c), np.zeros(c)])
            slot[0] += n
            slot[1] += s1
            slot[2] += s2
    if not per_c:
        return None
    n, s1, s2 = max(per_c.values(), key=lambda v: v[0])
    return np.full(len(s1), n, dtype=np.float64), s1, s2


def _splits_frame(s: pd.DataFrame, reads: list[_ShardRead], splits: list[str], num_classes: int) -> pd.DataFrame:
    rows = []
    for split in splits:
        in_split = s[s["in_shards"] & (s["split"] == split)]
        dec = in_split[in_split["decodes"] == True]  # noqa: E712
        labels = pd.to_numeric(in_split["cls"], errors="coerce").dropna().astype(int)
        counts = np.array([(labels == c).sum() for c in range(num_classes)], dtype=float)
        mean_count = counts.mean() if num_classes else 0.0
        totals = _pixel_totals(reads, split)
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


def _normalization(reads: list[_ShardRead]) -> dict[str, list[float]] | None:
    totals = _pixel_totals(reads, "train")
    if totals is None:
        return None
    n, s1, s2 = totals
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
    return {"mean": [round(float(v), 6) for v in mean], "std": [round(float(v), 6) for v in std]}


def collect_facts(shard_dir: Path, manifest_path: Path, splits: list[str], num_classes: int | None = None,
                  workers: int | None = None) -> Facts:  # fmt: skip
    """Re-read every shard under `shard_dir`, join with the manifest, return the frames to check.

    `num_classes` None: the number of distinct `class_name`s in the manifest.
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
    on_disk = {p.relative_to(shard_dir).as_posix(): p for p in sorted(shard_dir.rglob("*.tar"))}
    reads = _read_all([(str(p), ident) for ident, p in on_disk.items()], workers or os.cpu_count() or 1)
    tar = pd.DataFrame([row for r in reads for row in r.rows], columns=SAMPLE_FIELDS)
    samples = _samples_frame(tar, man)
    return Facts(
        manifest=manifest,
        samples=samples,
        shards=_shards_frame(reads, man, set(on_disk)),
        splits=_splits_frame(samples, reads, splits, num_classes),
        num_classes=num_classes,
        normalization=_normalization(reads),
        read_s=time.perf_counter() - start,
    )
