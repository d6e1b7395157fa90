"""Schedules: values at step 0, at the end of warmup and at the final step; monotone pieces."""

from __future__ import annotations

import math

import pytest

from pipeline.config import TrainParams
from pipeline.ijepa.schedules import Schedules, lr_at, momentum_at, run_length, wd_at

TOTAL, WARMUP = 101, 20


def test_lr_warmup_then_cosine() -> None:
    assert lr_at(0, TOTAL, WARMUP, 1e-4, 1e-3, 1e-6) == pytest.approx(1e-4)
    assert lr_at(WARMUP // 2, TOTAL, WARMUP, 1e-4, 1e-3, 1e-6) == pytest.approx(5.5e-4)
    assert lr_at(WARMUP, TOTAL, WARMUP, 1e-4, 1e-3, 1e-6) == pytest.approx(1e-3)
    mid = WARMUP + (TOTAL - 1 - WARMUP) // 2
    assert lr_at(mid, TOTAL, WARMUP, 1e-4, 1e-3, 1e-6) == pytest.approx((1e-3 + 1e-6) / 2)
    assert lr_at(TOTAL - 1, TOTAL, WARMUP, 1e-4, 1e-3, 1e-6) == pytest.approx(1e-6)
    warm = [lr_at(s, TOTAL, WARMUP, 1e-4, 1e-3, 1e-6) for s in range(WARMUP + 1)]
    decay = [lr_at(s, TOTAL, WARMUP, 1e-4, 1e-3, 1e-6) for s in range(WARMUP, TOTAL)]
    assert warm == sorted(warm) and decay == sorted(decay, reverse=True)


def test_weight_decay_cosine_increases() -> None:
    assert wd_at(0, TOTAL, 0.04, 0.4) == pytest.approx(0.04)
    assert wd_at(50, TOTAL, 0.04, 0.4) == pytest.approx(0.22)
    assert wd_at(TOTAL - 1, TOTAL, 0.04, 0.4) == pytest.approx(0.4)


def test_momentum_linear() -> None:
    assert momentum_at(0, TOTAL, 0.996, 1.0) == pytest.approx(0.996)
    assert momentum_at(50, TOTAL, 0.996, 1.0) == pytest.approx(0.998)
    assert momentum_at(TOTAL - 1, TOTAL, 0.996, 1.0) == pytest.approx(1.0)


def test_schedules_from_params_and_edge_cases() -> None:
    params = TrainParams(
        epochs=4, warmup_epochs=0.5, lr=2e-3, start_lr=2e-4, final_lr=1e-5, weight_decay=(0.04, 0.4), ema=(0.996, 1.0)
    )
    sch = Schedules.from_params(params, steps_per_epoch=10, total_steps=40)
    assert sch.warmup_steps == 5
    first, peak, last = sch.at(0), sch.at(5), sch.at(39)
    assert (first.lr, first.wd, first.momentum) == pytest.approx((2e-4, 0.04, 0.996))
    assert peak.lr == pytest.approx(2e-3)
    assert (last.lr, last.wd, last.momentum) == pytest.approx((1e-5, 0.4, 1.0))
    # no warmup, and a one-step run, stay finite
    assert lr_at(0, 10, 0, 1e-4, 1e-3, 0.0) == pytest.approx(1e-3)
    assert all(math.isfinite(v) for v in (lr_at(0, 1, 5, 1e-4, 1e-3, 0.0), wd_at(0, 1, 0.04, 0.4)))
    with pytest.raises(ValueError):
        Schedules.from_params(params, steps_per_epoch=0, total_steps=0)


def test_min_steps_stretches_small_datasets_and_keeps_the_warmup_share() -> None:
    params = TrainParams(epochs=2, warmup_epochs=0.25, min_steps=900)
    assert run_length(params, steps_per_epoch=429) == 900  # 55k images at batch 128: 858 < 900
    assert run_length(params, steps_per_epoch=62) == 900  # 8k images: 124 steps without min_steps
    assert run_length(params, steps_per_epoch=1000) == 2000  # large data: epochs rule
    assert run_length(TrainParams(epochs=2), steps_per_epoch=62) == 124  # no floor set
    small = Schedules.from_params(params, steps_per_epoch=62, total_steps=900)
    assert small.warmup_steps == round(0.125 * 900)  # warmup_epochs / epochs of the run
    unstretched = Schedules.from_params(params, steps_per_epoch=1000, total_steps=2000)
    assert unstretched.warmup_steps == 250  # exactly warmup_epochs x steps_per_epoch


def test_warmup_stable_decay() -> None:
    params = TrainParams(epochs=2, warmup_epochs=0.25, lr=1e-3, start_lr=1e-4, final_lr=1e-6, lr_schedule="wsd",
                         lr_decay_fraction=0.25)  # fmt: skip
    sch = Schedules.from_params(params, steps_per_epoch=50, total_steps=100)
    assert sch.warmup_steps == 12 and sch.decay_start == 75
    lrs = [sch.at(s).lr for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[12] == pytest.approx(1e-3)
    assert all(v == pytest.approx(1e-3) for v in lrs[12:76])  # stable until the decay starts
    assert lrs[99] == pytest.approx(1e-6) and lrs[76:] == sorted(lrs[76:], reverse=True)
    cosine = Schedules.from_params(TrainParams(epochs=2, lr=1e-3, start_lr=1e-4), 50, 100)
    assert cosine.decay_start is None and cosine.at(50).lr < 1e-3 * 0.9  # the default decays from the warmup on
