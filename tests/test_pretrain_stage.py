"""The `pretrain` stage as a process: SIGKILL + rerun, `dvc repro`, param presets."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.config import ParamsError
from pipeline.ijepa.checkpoint import list_checkpoints
from pipeline.ijepa.presets import preset_overrides
from tests.conftest import dvc
from tests.test_train import ROOT, assert_same_tensors, make_root, stage_env, write_params

STAGE = [sys.executable, "-m", "stages.pretrain"]


@pytest.mark.slow  # ~15 s idle, >30 s on a loaded 2-core machine
def test_sigkill_then_rerun_equals_uninterrupted(tmp_path: Path) -> None:
    long = dict(epochs=20, checkpoint_every=10, log_every=5, snapshots=3)  # 120 steps of a tiny model
    a, b = make_root(tmp_path / "a"), make_root(tmp_path / "b")
    for root in (a, b):
        write_params(root, **long)
    done = subprocess.run(STAGE, cwd=a, env=stage_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    proc = subprocess.Popen(STAGE, cwd=b, env=stage_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not list_checkpoints(b / "models/checkpoints") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = int(list_checkpoints(b / "models/checkpoints")[-1].name[9:16])
    assert 0 < killed_at < 120 and not (b / "models/encoder.safetensors").exists()

    rerun = subprocess.run(STAGE, cwd=b, env=stage_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming at step {killed_at}/120" in rerun.stderr
    report = json.loads((b / "reports/pretrain.json").read_text())
    timing = json.loads((b / "reports/timings/pretrain.json").read_text())  # resumes are run facts, not outputs
    assert timing["resumed_from_step"] == killed_at and report["steps"] == 120 and "resumed_from_step" not in report
    assert (b / "reports/pretrain.json").read_bytes() == (a / "reports/pretrain.json").read_bytes()
    assert_same_tensors(a / "models/encoder.safetensors", b / "models/encoder.safetensors")
    index_a = json.loads((a / "models/snapshots/index.json").read_text())
    index_b = json.loads((b / "models/snapshots/index.json").read_text())
    assert [e["file"] for e in index_a] == [e["file"] for e in index_b] and len(index_a) == 3
    for entry in index_a:
        assert_same_tensors(a / "models/snapshots" / entry["file"], b / "models/snapshots" / entry["file"])


def test_stage_reports_errors_without_traceback(tmp_path: Path) -> None:
    root = make_root(tmp_path / "r")
    write_params(root)
    (root / "reports/validation.json").unlink()
    proc = subprocess.run(STAGE, cwd=root, env=stage_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "pretrain: error:" in proc.stderr and "validation.json" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_dvc_repro_pretrain_writes_contract_and_is_cached(tiny_project: Path) -> None:
    dvc(tiny_project, "repro", "shard")
    # the validate stage's contract output, written by hand so this test covers `pretrain` alone
    (tiny_project / "reports").mkdir(exist_ok=True)
    (tiny_project / "reports/validation.json").write_text(
        json.dumps({"success": True, "normalization": {"mean": [0.43], "std": [0.15]}})
    )
    dvc_yaml = (tiny_project / "dvc.yaml").read_text()
    dvc(tiny_project, "repro", "--single-item", "pretrain")
    assert (tiny_project / "dvc.yaml").read_text() == dvc_yaml  # dvclive must not rewrite it
    models = tiny_project / "models"
    meta = json.loads((models / "encoder.json").read_text())
    assert meta["format"] == "ijepa-encoder/1" and meta["normalization"]["mean"] == [0.43]
    assert (models / "encoder.safetensors").is_file() and len(list_checkpoints(models / "checkpoints")) >= 1
    index = json.loads((models / "snapshots/index.json").read_text())
    assert len(index) == 2 and all((models / "snapshots" / e["file"]).is_file() for e in index)
    report = json.loads((tiny_project / "reports/pretrain.json").read_text())
    assert report["steps"] == 10 and report["final_loss"] > 0
    assert (tiny_project / "reports/dvclive/plots/metrics/loss.tsv").is_file()
    assert "final_loss" in dvc(tiny_project, "metrics", "show", "reports/pretrain.json").stdout
    plots = dvc(tiny_project, "plots", "show", "--json", "reports/dvclive/plots/metrics").stdout
    assert "reports/dvclive/plots/metrics/loss.tsv" in plots
    again = dvc(tiny_project, "repro", "--single-item", "pretrain")
    assert "didn't change, skipping" in again.stdout, again.stdout


def test_presets_validate_and_flatten(tmp_path: Path) -> None:
    params = ROOT / "params.yaml"
    for preset in sorted((ROOT / "configs").glob("*.yaml")):
        overrides = preset_overrides(preset, params)
        assert overrides and all("=" in o and " " not in o for o in overrides), preset.name
    assert "train.epochs=8" in preset_overrides(ROOT / "configs/long.yaml", params)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train": {"epochs": 0}}))
    with pytest.raises(ParamsError, match=r"bad\.yaml.*\n.*train\.epochs"):
        preset_overrides(bad, params)
