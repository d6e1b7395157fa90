"""Per-step optimisation schedules of I-JEPA pretraining (DESIGN.md §4).

Owns the learning rate (linear warmup `start_lr → lr`, then cosine `lr → final_lr`; or with
`lr_schedule: wsd` warmup, a constant `lr`, and a cosine `lr → final_lr` over the last
`lr_decay_fraction` of the run: warmup-stable-decay), the weight
decay (cosine `wd[0] → wd[1]`, i.e. 0.04 → 0.4 *increasing*) and the EMA momentum (linear
`ema[0] → ema[1]`). Everything is a pure function of `(step, total_steps)`: there is no scheduler
state to checkpoint, so a resumed run recomputes exactly the same values.

Run length: `epochs` passes over the data, stretched to `min_steps` updates when the dataset is small
(`run_length`), so one set of defaults gives 8k images as many updates as 55k; the warmup then covers
the same fraction of the run (`warmup_epochs / epochs`).

Convention: `step` is the 0-based index of the optimiser update; the first update (step 0) uses the
start values and the last update (step `total_steps - 1`) uses exactly the final values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.config import TrainParams


def _progress(step: int, start: int, end: int) -> float:
    """Fraction in [0, 1] of the way from `start` to `end` (1 when the interval is empty)."""
    if end <= start:
        return 1.0
    return min(1.0, max(0.0, (step - start) / (end - start)))


def _cosine(a: float, b: float, t: float) -> float:
    """Half-cosine interpolation from `a` (t=0) to `b` (t=1)."""
    return b + (a - b) * 0.5 * (1.0 + math.cos(math.pi * t))


def lr_at(
    step: int,
    total_steps: int,
    warmup_steps: int,
    start_lr: float,
    lr: float,
    final_lr: float,
    decay_start: int | None = None,
) -> float:
    """Learning rate of update `step`: linear warmup over `warmup_steps`, then cosine to `final_lr`;
    with `decay_start`, constant `lr` until that step and the cosine only from there to the end."""
    last = total_steps - 1
    warmup_steps = min(warmup_steps, last)
    if step < warmup_steps:
        return start_lr + (lr - start_lr) * step / warmup_steps
    begin = warmup_steps if decay_start is None else max(warmup_steps, min(decay_start, last))
    if step < begin:
        return lr
    return _cosine(lr, final_lr, _progress(step, begin, last))


def wd_at(step: int, total_steps: int, start_wd: float, final_wd: float) -> float:
    """Weight decay of update `step`: cosine from `start_wd` to `final_wd` over the whole run."""
    return _cosine(start_wd, final_wd, _progress(step, 0, total_steps - 1))


def momentum_at(step: int, total_steps: int, start: float, final: float) -> float:
    """EMA momentum of update `step`: linear from `start` to `final` over the whole run."""
    return start + (final - start) * _progress(step, 0, total_steps - 1)


def run_length(params: TrainParams, steps_per_epoch: int) -> int:
    """Updates of a run: `epochs` x `steps_per_epoch`, at least `min_steps`."""
    return max(params.epochs * steps_per_epoch, params.min_steps or 0)


@dataclass(frozen=True)
class ScheduleValues:
    """The three scheduled hyper-parameters of one update."""

    lr: float
    wd: float
    momentum: float


@dataclass(frozen=True)
class Schedules:
    """All schedules of one run, fixed by the train params and the run length in steps."""

    total_steps: int
    warmup_steps: int
    start_lr: float
    lr: float
    final_lr: float
    wd: tuple[float, float]
    ema: tuple[float, float]
    decay_start: int | None = None  # wsd: first step of the lr decay; None: cosine from the warmup on

    @classmethod
    def from_params(cls, params: TrainParams, steps_per_epoch: int, total_steps: int) -> Schedules:
        """Schedules for a run of `total_steps` updates with `steps_per_epoch` updates per epoch."""
        if total_steps < 1 or steps_per_epoch < 1:
            raise ValueError(f"a run needs >= 1 step (steps_per_epoch={steps_per_epoch}, total={total_steps})")
        if total_steps == params.epochs * steps_per_epoch:
            warmup = round(params.warmup_epochs * steps_per_epoch)
        else:  # stretched (min_steps) or cut: the warmup keeps its share of the run
            warmup = round(params.warmup_epochs / params.epochs * total_steps)
        return cls(
            total_steps=total_steps,
            warmup_steps=warmup,
            start_lr=params.start_lr,
            lr=params.lr,
            final_lr=params.final_lr,
            wd=tuple(params.weight_decay),
            ema=tuple(params.ema),
            decay_start=round(total_steps * (1 - params.lr_decay_fraction)) if params.lr_schedule == "wsd" else None,
        )

    def at(self, step: int) -> ScheduleValues:
        """Values for update `step` (0-based)."""
        n = self.total_steps
        return ScheduleValues(
            lr=lr_at(step, n, self.warmup_steps, self.start_lr, self.lr, self.final_lr, self.decay_start),
            wd=wd_at(step, n, *self.wd),
            momentum=momentum_at(step, n, *self.ema),
        )
