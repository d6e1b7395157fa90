"""`data.deduplicate`: exact duplicates (identical decoded pixels) removed before the split.

Real photo folders hold copies of the same picture (in one class, across classes, or once in what
becomes train and once in test, which the validation gate rightly fails as leakage). A source with
`deduplicate: true` fingerprints every image (`pixel_digest` of the full decode in the target mode,
in a worker pool), keeps the first of each group in its deterministic listing order and drops the
others; each dropped one is listed as `{"path", "duplicate_of"}` in reports/shard.json.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.data.images import CorruptImageError, source_digest
from pipeline.data.workers import ordered_map


def first_occurrences(digests: Sequence[str | None]) -> tuple[list[int], list[tuple[int, int]]]:
    """(indices kept, [(dropped index, index it duplicates)]); None digests are kept as they are."""
    first: dict[str, int] = {}
    keep: list[int] = []
    dropped: list[tuple[int, int]] = []
    for i, d in enumerate(digests):
        if d is None or d not in first:
            if d is not None:
                first[d] = i
            keep.append(i)
        else:
            dropped.append((i, first[d]))
    return keep, dropped


def _digest_job(job: tuple[str, str, str]) -> str | CorruptImageError:
    path, rel, mode = job
    try:
        return source_digest(Path(path), rel, mode)
    except CorruptImageError as err:
        return err


def file_digests(
    root: Path,
    rels: Sequence[str],
    mode: str,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[str | CorruptImageError]:
    """`source_digest` of every file (in order), in `workers` processes; failures returned, not raised."""
    workers = workers or os.cpu_count() or 1
    out: list[str | CorruptImageError] = []
    with ordered_map(lambda i: _digest_job((str(root / rels[i]), rels[i], mode)), len(rels), workers) as digests:
        for digest in digests:
            out.append(digest)
            if progress:
                progress(1)
    return out
