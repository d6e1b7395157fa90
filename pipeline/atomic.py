"""Atomic file writes shared by every stage: write a temp file beside the target, then `os.replace`
it into place, so a crash never leaves a half-written report, card or plot behind.

A write that fails because the filesystem is full (or over quota) raises `NoSpaceError` naming the
target file, after its temp files are removed; the previous file under the target name is untouched.
`replacing` gives the same guarantee to writers that produce their temp files themselves (checkpoints,
safetensors). Libraries hide the errno in different places (torch wraps it in a RuntimeError whose
context is the OSError, safetensors' Rust error says `os error 28`): `error_errno` finds it.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


class NoSpaceError(OSError):
    """A write failed for lack of space; the message names the file, nothing half-written is left."""

    def __init__(self, path: Path | str, cause: BaseException | None = None) -> None:
        path = Path(path)
        free = _free_bytes(path.parent)
        where = f"{free / 1e6:.1f} MB free on its filesystem" if free is not None else "its filesystem is full"
        super().__init__(
            errno.ENOSPC,
            f"no space left writing {path} ({where}); the temp file was removed and the previous {path.name}, "
            f"if any, is intact. Free some space and rerun.",
        )
        self.path = path
        self.__cause__ = cause

    def __str__(self) -> str:
        return str(self.strerror)


def _free_bytes(directory: Path) -> int | None:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def error_errno(exc: BaseException) -> int | None:
    """The OS errno behind `exc`: its own, that of the exception it wraps (`__cause__`/`__context__`), or
    the `(os error N)` of a Rust library's message."""
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, OSError) and node.errno is not None:
            return node.errno
        if match := _RUST_OS_ERROR.search(str(node)):
            return int(match.group(1))
        node = node.__cause__ or node.__context__
    return None


def is_no_space(exc: BaseException) -> bool:
    return error_errno(exc) in NO_SPACE


@contextmanager
def replacing(target: Path | str, *temps: Path) -> Iterator[None]:
    """Guard the writing of `temps` that will replace `target`: on any failure the temps are removed (also
    after success, when the caller has renamed them they are simply gone); a failure for lack of space is
    re-raised as `NoSpaceError` naming `target`."""
    try:
        yield
    except NoSpaceError:
        raise
    except BaseException as exc:
        if is_no_space(exc):
            raise NoSpaceError(target, exc) from exc
        raise
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path | str, text: str) -> None:
    """Write `text` to `<dir>/.<name>.<pid>.tmp`, then rename it onto `path` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with replacing(path, tmp):
        tmp.write_text(text)
        os.replace(tmp, path)


def write_json_atomic(path: Path | str, data: Any, *, sort_keys: bool = False) -> None:
    """Indented JSON with a trailing newline, written atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")


def write_csv_atomic(path: Path | str, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """CSV with a header row (`columns`, in order), written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())
