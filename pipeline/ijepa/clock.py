"""Wall-clock accounting of a pretraining run, kept out of its checkpoints and outputs.

A checkpoint holds only what the params and the data determine (model, optimizer, data position,
logged loss curve), so an uninterrupted run and a killed-and-resumed one write the same bytes. The
run's wall time, data-wait time and resume count live in `RunClock`, saved to
reports/timings/pretrain.json (pipeline/timings.py) beside every checkpoint; a resumed attempt
continues those numbers when the file matches the checkpoint it resumes from, else it times only
itself (`timed_from_step` says from where).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.timings import per_s, read_timings, write_timings


@dataclass
class RunClock:
    """Wall time, data-wait time and attempts of one pretraining run, across resumes."""

    path: Path
    wall_s: float = 0.0
    data_wait_s: float = 0.0
    timed_from_step: int = 0  # the numbers cover steps timed_from_step..step
    timed_images: int = 0  # images trained on since timed_from_step
    resumed_from_step: int = 0  # where the last attempt started (0: a fresh run)
    attempts: int = 1
    _t0: float = field(default_factory=time.perf_counter, repr=False)
    _wall0: float = field(default=0.0, repr=False)

    @classmethod
    def start(cls, path: Path | str, step: int) -> RunClock:
        """The clock of an attempt starting at `step` (0: a fresh run; else a resume from that checkpoint)."""
        path = Path(path)
        saved = read_timings(path) if step else None
        if saved is None or saved.get("step") != step:
            return cls(path, timed_from_step=step, resumed_from_step=step)
        clock = cls(
            path,
            wall_s=float(saved.get("wall_s", 0.0)),
            data_wait_s=float(saved.get("data_wait_s", 0.0)),
            timed_from_step=int(saved.get("timed_from_step", 0)),
            timed_images=int(saved.get("timed_images", 0)),
            resumed_from_step=step,
            attempts=int(saved.get("attempts", 1)) + 1,
        )
        clock._wall0 = clock.wall_s
        return clock

    def tick(self, images: int, wait_s: float) -> None:
        """Account one update of `images` images that waited `wait_s` s for its batch."""
        self.timed_images += images
        self.data_wait_s += wait_s
        self.wall_s = self._wall0 + time.perf_counter() - self._t0

    def record(self, step: int, **extra: Any) -> dict[str, Any]:
        """The timings at `step` (plus `extra`), written to `path`; returns them."""
        timing = {
            "step": step,
            "wall_s": round(self.wall_s, 2),
            "images_per_s": per_s(self.timed_images, self.wall_s),
            "data_wait_s": round(self.data_wait_s, 3),
            "data_wait_fraction": round(self.data_wait_s / max(self.wall_s, 1e-9), 4),
            "timed_from_step": self.timed_from_step,
            "timed_images": self.timed_images,
            "resumed_from_step": self.resumed_from_step,
            "attempts": self.attempts,
            **extra,
        }
        write_timings(self.path, timing)
        return timing
