"""Identity of the source dataset (the files outside the repository that `shard` read): file count,
bytes and a digest over (relpath, sha256), with per-file hashes when there are few files. Recorded in
the registry entry; the lineage audit recomputes it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.registry.records import hash_path

FASHION_MNIST_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
LIST_FILES_MAX = 200


def source_files(source: str, root: Path) -> Iterator[Path]:
    """The files a source reads: the 4 idx gz files (fashion-mnist) or every image under root."""
    if source == "fashion-mnist":
        yield from (root / n for n in FASHION_MNIST_NAMES if (root / n).is_file())
    else:
        yield from sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def source_identity(source: str, root: str, max_bytes: int) -> dict[str, Any]:
    """Identity of the source dataset: file count, bytes and a digest over (relpath, sha256) lines.
    Per-file hashes are listed up to LIST_FILES_MAX files; nothing is hashed above `max_bytes`."""
    base = Path(root)
    out: dict[str, Any] = {"name": source, "root": root, "hashed": False}
    if not base.is_dir():
        return {**out, "reason": "root not found"}
    files = list(source_files(source, base))
    total = sum(p.stat().st_size for p in files)
    out.update({"file_count": len(files), "bytes": total})
    if total > max_bytes:
        return {**out, "reason": f"{total} bytes > register.source_hash_max_bytes {max_bytes}"}
    hashes = {p.relative_to(base).as_posix(): hash_path(p).sha256 for p in files}
    out["digest"] = source_digest(hashes)
    out["hashed"] = True
    if len(hashes) <= LIST_FILES_MAX:
        out["files"] = hashes
    return out


def source_digest(hashes: dict[str, str]) -> str:
    text = "".join(f"{rel}\t{sha}\n" for rel, sha in sorted(hashes.items()))
    return hashlib.sha256(text.encode()).hexdigest()
