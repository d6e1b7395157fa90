"""Training telemetry: dvclive metric files, the progress bar and interval loss/throughput counters.

`RunLogger` writes one dvclive row per logged step to `reports/dvclive/plots/metrics/*.tsv`
(`Live(dvcyaml=None, save_dvc_exp=False)`: it never rewrites dvc.yaml; the plots are declared there
statically). Rows hold what the params and data determine (loss, schedules, feature statistics), never
a timing, so two runs write the same files; throughput is shown in the progress bar and totalled in
reports/timings/pretrain.json (pipeline/ijepa/clock.py). It keeps the logged rows as plain dicts so
that the training checkpoint can store them: a resumed run replays them first, giving the same curves
as an uninterrupted run even when DVC removed the old files before re-running the stage. Only rank 0
logs; other ranks get a silent one.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory, or the process's peak RSS on CPU, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


class Meter:
    """Accumulates loss and images between two log points."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.t0 = time.perf_counter()
        self.loss_sum: torch.Tensor | float = 0.0
        self.steps = 0
        self.images = 0

    def update(self, loss: torch.Tensor, images: int) -> None:
        self.loss_sum = self.loss_sum + loss.detach().float()
        self.steps += 1
        self.images += images

    def loss(self) -> float:
        """Mean loss of the interval (syncs the device once)."""
        return float(self.loss_sum) / max(self.steps, 1)

    def images_per_s(self) -> float:
        """Throughput of the interval: for the progress bar only, never logged (it differs run to run)."""
        return self.images / max(time.perf_counter() - self.t0, 1e-9)


class RunLogger:
    """dvclive + tqdm on rank 0; every method is a no-op when `enabled` is False."""

    def __init__(
        self,
        live_dir: Path,
        total_steps: int,
        start_step: int,
        history: list[dict[str, Any]] | None = None,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.history: list[dict[str, Any]] = list(history or [])
        self.live = None
        self.bar = None
        if not enabled:
            return
        from dvclive import Live  # imported lazily: non-zero ranks never touch dvclive

        self.live = Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, resume=False)
        for row in self.history:  # replay what earlier attempts of this run logged
            self._write(row)
        tty = sys.stderr.isatty()
        self.bar = tqdm(
            total=total_steps,
            initial=start_step,
            desc="pretrain",
            unit="step",
            dynamic_ncols=True,
            mininterval=0.5 if tty else 30.0,
            file=sys.stderr,
        )

    def _write(self, row: dict[str, Any]) -> None:
        assert self.live is not None
        self.live.step = int(row["step"])
        for name, value in row.items():
            if name != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.live.log_metric(name, float(value))
        self.live.next_step()

    def log(self, step: int, metrics: dict[str, float], images_per_s: float = 0.0) -> None:
        """Record the metrics of update count `step` (history + dvclive) and show them with the interval's
        `images_per_s` in the progress bar."""
        if not self.enabled:
            return
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self.history.append(row)
        self._write(row)
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{row.get('loss', float('nan')):.4f}", img_s=f"{images_per_s:.0f}", refresh=False
            )

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def message(self, text: str) -> None:
        """A line on stderr that does not break the progress bar."""
        if self.enabled:
            tqdm.write(text, file=sys.stderr)

    def warn_low_rank(self, step: int, rank: float, threshold: float | None, after: int = 0) -> None:
        """A warning line when the pooled target features' effective rank is below `threshold`, from
        step `after` on: a random-init encoder's rank is ~1.3 and a healthy run's rises only after the
        first few hundred steps (bench/tuning.md), so the lr warm-up is not judged."""
        if threshold is not None and step > after and 0 < rank < threshold:
            self.message(
                f"pretrain: warning: step {step}: effective rank of the pooled target features is {rank:.2f} "
                f"(< train.collapse_warn_rank {threshold:g}): the encoder is collapsing to a few directions"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.live is not None:
            self.live.end()
            self.live = None
