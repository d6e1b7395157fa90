"""Atomic file writes shared by every stage: write a temp file beside the target, then `os.replace`
it into place, so a crash never leaves a half-written report, card or plot behind."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def write_text_atomic(path: Path | str, text: str) -> None:
    """Write `text` to `<dir>/.<name>.<pid>.tmp`, then rename it onto `path` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
