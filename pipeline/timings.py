"""What differs between two runs of the same inputs, kept out of the stages' outputs: `reports/timings/`.

Every DVC-tracked output holds only what the stage's inputs determine, so two runs on the same inputs
write the same bytes and dvc.lock does not move (docs/CONTRACTS.md, "Byte-reproducible outputs").
What does differ -- wall time, throughput, peak memory, resumes, when and from which commit a stage
ran -- goes beside the report, under `timings/` with the report's name: reports/shard.json ->
reports/timings/shard.json. No stage depends on these files and none is a stage output; they are
committed and expected to change on every run. reports/timings/pretrain.json is also a top-level DVC
metric, so `dvc exp show` compares training time and speed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pipeline.atomic import write_json_atomic

DIR = "timings"


def timings_path(report: Path | str) -> Path:
    """Where the timings of the stage that writes `report` go: `<report dir>/timings/<report name>`."""
    report = Path(report)
    return report.parent / DIR / report.name


def write_timings(path: Path | str, timing: dict[str, Any]) -> None:
    """Write a timings file atomically (sorted keys)."""
    write_json_atomic(path, timing, sort_keys=True)


def read_timings(path: Path | str) -> dict[str, Any] | None:
    """A timings file's content; None when it is missing or unreadable (timings are never an input)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def per_s(count: float, seconds: float) -> float:
    """`count / seconds`, rounded to 0.1, safe for a zero duration."""
    return round(count / max(seconds, 1e-9), 1)


class Stopwatch:
    """Seconds since construction (`time.perf_counter`)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def seconds(self, ndigits: int = 3) -> float:
        return round(time.perf_counter() - self.start, ndigits)
