"""Divergence guard of the training loop: a non-finite or exploding loss stops the run.

`LossGuard.watch` folds every update's loss into two device tensors (any non-finite loss seen; the
largest loss), so it adds no host-device sync per step; `check` syncs once and raises `DivergenceError`
when a loss since the last check was NaN/inf, or larger than `train.divergence_factor` times the
reference loss (the first logged loss of the run: the level a sane run only goes down from). The loop
checks before it logs a row and before it writes a checkpoint, so no checkpoint of a diverged model is
ever saved: the last one on disk is the last good state, and it is kept. Under DDP the verdict is
all-reduced, so every rank stops at the same step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist


class DivergenceError(RuntimeError):
    """Training diverged (non-finite or exploding loss); the message says where and what to change."""


class LossGuard:
    """Watches the loss of every update; `check` raises `DivergenceError` (module docstring)."""

    def __init__(self, factor: float | None, history: list[dict[str, Any]], world: int = 1) -> None:
        self.factor, self.world = factor, world
        first = next((row["loss"] for row in history if math.isfinite(row.get("loss", math.nan))), None)
        self.reference: float | None = float(first) if first is not None else None
        self._bad: torch.Tensor | None = None
        self._peak: torch.Tensor | None = None

    def watch(self, loss: torch.Tensor) -> None:
        loss = loss.detach().float()
        bad, peak = (~torch.isfinite(loss)).float(), torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0)
        self._bad = bad if self._bad is None else torch.maximum(self._bad, bad)
        self._peak = peak if self._peak is None else torch.maximum(self._peak, peak)

    def check(self, step: int, checkpoints: Path, logged_loss: float | None = None) -> None:
        """Raise when a watched loss since the last check diverged. Call it on every rank at the same
        steps. `logged_loss` (the mean of the first logged window) sets the reference when there is none."""
        if self._bad is None or self._peak is None:
            return
        logged = logged_loss if logged_loss is not None and math.isfinite(logged_loss) else 0.0
        verdict = torch.stack([self._bad, self._peak, torch.tensor(logged, device=self._peak.device)])
        if self.world > 1:
            torch_dist.all_reduce(verdict, op=torch_dist.ReduceOp.MAX)
        bad, peak, logged = (float(v) for v in verdict.cpu())
        self._bad = self._peak = None
        if bad:
            self._stop(step, "the loss is not finite (NaN or inf)", checkpoints)
        if self.reference is None:
            self.reference = logged or None
            return
        if self.factor is not None and peak > self.factor * self.reference:
            why = (
                f"the loss reached {peak:.4g}, more than train.divergence_factor {self.factor:g} x the run's first "
                f"logged loss {self.reference:.4g}"
            )
            self._stop(step, why, checkpoints)

    @staticmethod
    def _stop(step: int, why: str, checkpoints: Path) -> None:
        from pipeline.ijepa.checkpoint import list_checkpoints

        found = list_checkpoints(checkpoints)
        kept = f"the last good checkpoint {found[-1]} is kept" if found else "no checkpoint was written yet"
        raise DivergenceError(
            f"training diverged by step {step}: {why}. Stopped before saving anything of the diverged model; "
            f"{kept}. Lower train.lr (or set train.grad_clip), then rerun with train.resume=false."
        )
