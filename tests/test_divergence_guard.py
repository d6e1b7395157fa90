"""Divergence guard: bad learning rates are refused up front; a run whose loss goes non-finite or explodes
stops with a clear message, and the last checkpoint saved before that is kept intact."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.config import ParamsError, TrainParams, parse_section
from pipeline.ijepa.checkpoint import list_checkpoints, load_checkpoint
from pipeline.ijepa.guard import DivergenceError, LossGuard
from pipeline.ijepa.train import RunPaths, pretrain
from tests.test_train import MASK, MODEL, TRAIN, make_root, stage_env, write_params


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(
    ("train", "field"),
    [
        ({"lr": -1}, "train.lr"),
        ({"lr": 0}, "train.lr"),
        ({"start_lr": -1e-4}, "train.start_lr"),
        ({"final_lr": 0.0}, "train.final_lr"),
        ({"lr": 5.0}, "train.lr"),
        ({"lr": 1e-4, "start_lr": 1e-3}, "start_lr (0.001) and final_lr (1e-06) must be <= lr (0.0001)"),
        ({"ema": [1.0, 0.99]}, "ema must satisfy 0 <= start <= end <= 1"),
        ({"weight_decay": [-0.1, 0.4]}, "weight_decay values must be >= 0"),
        ({"grad_clip": 0}, "train.grad_clip"),
    ],
)
@pytest.mark.probe("bad-lr")
def test_bad_optimisation_params_are_refused_naming_the_field(train: dict, field: str) -> None:
    with pytest.raises(ParamsError, match="invalid params") as info:
        parse_section("train", train)
    assert field in str(info.value)


@pytest.mark.probe("bad-lr")
def test_the_stage_refuses_a_negative_lr_before_training(tmp_path: Path) -> None:
    root = make_root(tmp_path / "r")
    write_params(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["lr"] = -1
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    stage = [sys.executable, "-m", "stages.pretrain"]
    proc = subprocess.run(stage, cwd=root, env=stage_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "train.lr: Input should be greater than 0 (got -1)" in proc.stderr
    assert not (root / "models").exists()


def test_guard_stops_on_a_non_finite_loss_and_on_an_explosion(tmp_path: Path) -> None:
    guard = LossGuard(factor=10.0, history=[])
    for value in (0.5, 0.4):
        guard.watch(torch.tensor(value))
    guard.check(2, tmp_path, logged_loss=0.45)  # the first logged loss becomes the reference
    assert guard.reference == pytest.approx(0.45)
    for value in (0.3, 4.4):
        guard.watch(torch.tensor(value))
    guard.check(4, tmp_path)  # 4.4 < 10 x 0.45
    for value in (0.2, 5.0, 0.1):  # a spike inside the window counts, not only its mean
        guard.watch(torch.tensor(value))
    with pytest.raises(DivergenceError, match=r"by step 7: the loss reached 5, more than train.divergence_factor 10"):
        guard.check(7, tmp_path)
    resumed = LossGuard(factor=None, history=[{"step": 2, "loss": 0.45}])  # reference from the checkpoint history
    assert resumed.reference == 0.45
    resumed.watch(torch.tensor(1e9))
    resumed.check(8, tmp_path)  # factor None: only non-finite losses stop the run
    for value in (0.3, math.nan, 0.2):
        resumed.watch(torch.tensor(value))
    with pytest.raises(DivergenceError, match="by step 11: the loss is not finite"):
        resumed.check(11, tmp_path)


@pytest.mark.probe("bad-lr")
def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    root = make_root(tmp_path / "r")
    # gradient ascent, as `train.lr: -1` did before params were validated (model_copy skips validation)
    params = TrainParams(**{**TRAIN, "epochs": 6, "log_every": 2, "checkpoint_every": 4, "collapse_warn_rank": None})
    params = params.model_copy(update={"lr": -1.0})
    with pytest.raises(DivergenceError) as info:
        pretrain(MODEL, MASK, params, RunPaths.under(root))
    message = str(info.value)
    kept = list_checkpoints(root / "models/checkpoints")
    assert kept, "the guard stopped the run before the first checkpoint: make the run longer"
    assert f"the last good checkpoint {kept[-1]} is kept" in message and "Lower train.lr" in message
    stopped_at = int(message.split("by step ")[1].split(":")[0])
    assert int(kept[-1].name[9:16]) < stopped_at < 36  # stopped early, nothing saved after the divergence
    state = load_checkpoint(kept[-1])  # intact and verified
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (root / "models/encoder.safetensors").exists()
