"""Reading shard tars safely: Python's `tarfile` in stream mode, every member checked first.

Every reader of the shards (training and evaluation loaders, the validation gate, the sample count of
pretraining) goes through `iter_members` / `tar_samples`. A member whose name is absolute or holds a
`..` component, and any link or special file, raises `UnsafeTarError` naming the shard and the
member: a shard is data to read, never a tree to extract, and a link or an escaping name means it was
not written by our shard writer. Directory entries are skipped; regular files are yielded in tar order.

The webdataset pipeline stage built on it (`{"url": ...}` in, samples grouped by key out, like
`webdataset.tarfile_to_samples`) is `pipeline.data.loader.tar_samples`; this module needs only the
standard library, so the shard and validate stages do not import torch.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import IO


class UnsafeTarError(ValueError):
    """A shard holds a member that no reader may follow (absolute name, `..`, link, device...)."""


def member_problem(info: tarfile.TarInfo) -> str | None:
    """Why `info` is refused, or None when it is a plain file or a directory with a relative name."""
    name = info.name
    if name.startswith("/") or PurePosixPath(name).is_absolute():
        return "absolute member name"
    if ".." in PurePosixPath(name).parts or ".." in name.replace("\\", "/").split("/"):
        return "member name with a '..' component"
    if info.issym() or info.islnk():
        return f"link member (to {info.linkname!r})"
    if not (info.isreg() or info.isdir()):
        return "special member (device, fifo or unknown type)"
    return None


def iter_infos(
    fileobj: IO[bytes], shard: str, seekable: bool = False
) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """(open tar, header) of every regular file of a tar, each checked by `member_problem`; stream
    mode (bodies readable in order), or `seekable` (headers only, skipping the bodies). When `shard`
    is a local file, its end is checked too (`check_end`)."""
    with tarfile.open(fileobj=fileobj, mode="r:" if seekable else "r|*") as tar:
        while (info := tar.next()) is not None:
            problem = member_problem(info)
            if problem:
                raise UnsafeTarError(f"{shard}: refusing tar member {info.name!r}: {problem}")
            if info.isreg():
                yield tar, info
            tar.members = []  # do not keep every header of the shard in memory
        end = tar.offset
    if os.path.isfile(shard):
        check_end(shard, end)


def check_end(path: str, offset: int) -> None:
    """`tarfile` ends silently at a truncated header: require the end-of-archive marker (two zero
    blocks, then only zero padding) at `offset`, where reading stopped."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        tail = fh.read(1 << 16)
        more = fh.read(1)
    if len(tail) < 2 * tarfile.BLOCKSIZE or tail.count(0) != len(tail) or more:
        raise tarfile.ReadError(f"{path}: truncated or damaged at byte {offset} (no end-of-archive marker there)")


def iter_members(path: str, fileobj: IO[bytes] | None = None) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every regular file of the tar at `path` (or of `fileobj`, named `path`)."""
    if fileobj is not None:
        for tar, info in iter_infos(fileobj, path):
            yield info.name, tar.extractfile(info).read()  # type: ignore[union-attr]
        return
    with open(path, "rb") as fh:
        yield from iter_members(path, fh)


def member_names(path: str, fileobj: IO[bytes] | None = None) -> Iterator[str]:
    """Names of the regular files of a tar (or of seekable `fileobj`, named `path`), checked, without
    reading their bodies."""
    if fileobj is not None:
        for _, info in iter_infos(fileobj, path, seekable=True):
            yield info.name
        return
    with open(path, "rb") as fh:
        yield from member_names(path, fh)
