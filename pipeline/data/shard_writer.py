"""The streaming parts of the shard writer: encode in a worker pool, write each shard as it fills.

- `encode_item`: one source item → the stored bytes (`data.encoding`, pipeline/data/codecs.py) and its
  manifest facts;
- `encode_split`: every item of a split, encoded in `workers` forked processes and yielded *in
  order*, what one pipe buffers in flight per worker (memory does not grow with the split);
- `ShardSink`: writes samples straight into consecutive tars of one split, starting a new tar when
  `shard_max_count` or `shard_max_bytes` would be exceeded (the same cut as the in-memory writer had),
  hashing each tar while writing it. Members are written the way `webdataset.TarWriter(mode=0o444,
  mtime=0, user="", group="")` writes them (sorted extensions, `tarfile` stream mode, default format),
  byte for byte, with the standard library only: the shard stage does not import torch (~0.7 GB RSS).

Nothing here depends on the worker count: the cut, the keys and the bytes are the same for 1 or N.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pipeline.config import DataParams
from pipeline.data.codecs import encode
from pipeline.data.images import CorruptImageError
from pipeline.data.sources import SourceItem
from pipeline.data.workers import ordered_map

TAR_OVERHEAD = 3 * 1024  # three members, each a 512-byte header plus padding
CHUNK = 32  # items per worker message


@dataclass
class Encoded:
    """One encoded sample: what goes into the tar and the manifest."""

    source_id: str
    label: int
    ext: str
    data: bytes
    sha256: str
    width: int
    height: int
    mode: str
    kept: bool  # the source file's own bytes


def encode_item(item: SourceItem, params: DataParams) -> Encoded | CorruptImageError:
    """Load and encode one item; an unusable input is returned (not raised) so the caller decides."""
    try:
        stored = item.stored()
    except CorruptImageError as err:
        return err
    img, encoding = stored.image, params.stored_encoding
    if encoding == "keep" and stored.source_bytes is not None and stored.source_ext is not None:
        ext, data, kept = stored.source_ext, stored.source_bytes, True
    else:
        if encoding == "keep":  # lossy sources stay lossy, the rest lossless
            ext = "jpg" if stored.source_ext == "jpg" else "png"
        else:
            ext = "jpg" if encoding == "jpeg" else "png"
        data, kept = encode(img, ext, params.jpeg_quality), False
    return Encoded(item.source_id, item.label, ext, data, hashlib.sha256(data).hexdigest(), img.width, img.height,
                   img.mode, kept)  # fmt: skip


def encode_split(
    items: list[SourceItem], params: DataParams, workers: int
) -> AbstractContextManager[Iterator[Encoded | CorruptImageError]]:
    """`with encode_split(items, params, workers) as encoded:` every item encoded, in order, in
    `workers` forked processes (pipeline/data/workers.py; 1: in this process)."""
    return ordered_map(lambda i: encode_item(items[i], params), len(items), workers, CHUNK)


class _HashingFile:
    """A write-only file wrapper that hashes what passes through (tarfile's stream mode only writes)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh: IO[bytes] | None = fh
        self.sha256, self.size = hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.fh.write(data) if self.fh is not None else len(data)  # detached: an aborted tar


class SampleTar:
    """A tar stream of samples: each `write({"__key__": k, ext: bytes, ...})` adds `k.ext` members in
    sorted extension order, mode 0444, mtime 0, empty owner names (webdataset's TarWriter layout)."""

    def __init__(self, fileobj: _HashingFile) -> None:
        self.tar = tarfile.open(fileobj=fileobj, mode="w|")  # noqa: SIM115 - closed in close()

    def write(self, sample: dict) -> None:
        key = sample["__key__"]
        for ext in sorted(k for k in sample if not k.startswith("_")):
            body = sample[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode, info.uname, info.gname = len(body), 0, 0o444, "", ""
            self.tar.addfile(info, io.BytesIO(body))

    def close(self) -> None:
        self.tar.close()


class ShardSink:
    """Consecutive tars `{split}-NNNNNN.tar` of one split, written into `staging_dir` as samples come.

    `final_dir` is where the tars will live once the staging directory is moved into place (the path
    the manifest records). `digests` maps each final path to the sha256 of its bytes.
    """

    def __init__(self, staging_dir: Path, final_dir: Path, split: str, max_count: int, max_bytes: int) -> None:
        self.staging_dir, self.final_dir, self.split = staging_dir, final_dir, split
        self.max_count, self.max_bytes = max_count, max_bytes
        self.paths: list[Path] = []
        self.digests: dict[str, str] = {}
        self.bytes = 0
        self._fh: IO[bytes] | None = None
        self._hash: _HashingFile | None = None
        self._tar: SampleTar | None = None
        self._count = self._size = 0

    def add(self, sample: dict, cost: int) -> Path:
        """Write one sample (a webdataset dict of bytes); returns the final path of its tar."""
        if self._tar is None or self._count >= self.max_count or (self._count and self._size + cost > self.max_bytes):
            self._open_next()
        assert self._tar is not None
        self._tar.write(sample)
        self._count += 1
        self._size += cost
        return self.paths[-1]

    def _open_next(self) -> None:
        self.close()
        name = f"{self.split}-{len(self.paths):06d}.tar"
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.staging_dir / name, "wb")  # noqa: SIM115 - closed in close()
        self._hash = _HashingFile(self._fh)
        self._tar = SampleTar(self._hash)
        self.paths.append(self.final_dir / name)
        self._count = self._size = 0

    def close(self) -> None:
        """Finish the open tar (end-of-archive blocks, fsync)."""
        if self._tar is None or self._fh is None or self._hash is None:
            return
        self._tar.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self.digests[self.paths[-1].as_posix()] = self._hash.sha256.hexdigest()
        self.bytes += self._hash.size
        self._tar = self._fh = self._hash = None

    def abort(self) -> None:
        """Close the open file without finishing it (the caller removes the staging directory)."""
        if self._hash is not None:
            self._hash.fh = None  # the half-written tar's buffered tail goes nowhere
        if self._fh is not None:
            self._fh.close()
        self._tar = self._fh = self._hash = None


def sample_dict(key: str, enc: Encoded, class_name: str) -> dict:
    """The tar members of one sample: the image under its extension, `cls`, and `json` metadata."""
    meta = {"source_id": enc.source_id, "sha256": enc.sha256, "label": enc.label, "class_name": class_name}
    return {"__key__": key, enc.ext: enc.data, "cls": str(enc.label).encode(),
            "json": json.dumps(meta, sort_keys=True).encode()}  # fmt: skip


def sample_cost(enc: Encoded) -> int:
    return len(enc.data) + TAR_OVERHEAD
