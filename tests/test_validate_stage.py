"""The `validate` stage through DVC: passes on the real shard stage's output, and a failure stops `dvc repro`."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.conftest import dvc, set_params


def test_dvc_validate_passes_then_a_failure_stops_pretrain(tiny_project: Path) -> None:
    # default-shaped data, produced by the real `shard` stage, passes
    proc = dvc(tiny_project, "repro", "validate")
    assert "validate: OK: 54 of 54 checks passed on 800 images" in proc.stdout, proc.stdout + proc.stderr
    report = json.loads((tiny_project / "reports/validation.json").read_text())
    assert report["success"] is True and report["count"]["total"] == 800
    assert set(report["normalization"]) == {"mean", "std"} and len(report["normalization"]["mean"]) == 1
    assert 0.3 < report["normalization"]["mean"][0] < 0.6
    assert report["checks"]["sample_sha256"] == {"success": True, "observed": 0, "severity": "error",
                                                 "expected": "0 unexpected"}  # fmt: skip
    index = (tiny_project / "reports/data_docs/index.html").read_text()
    assert "ijepa_data.samples" in index and "ijepa_data.splits" in index
    metrics = dvc(tiny_project, "metrics", "show", "reports/validation.json").stdout
    assert "checks.split_size.train.observed" in metrics and "count.train" in metrics
    assert "didn't change, skipping" in dvc(tiny_project, "repro", "validate").stdout

    # a split far from its expected size: the stage exits 1, `dvc repro` stops before pretrain
    set_params(tiny_project, {"validate": {"expected_sizes": {"train": 5000, "val": 100, "test": 200}}})
    proc = dvc(tiny_project, "repro", "pretrain", check=False)
    assert proc.returncode != 0
    assert "validate: FAILED: 1 of 54 checks failed" in proc.stderr, proc.stderr
    assert "split_size.train [error]: observed 500; expected in [4750, 5250]" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    report = json.loads((tiny_project / "reports/validation.json").read_text())
    assert report["success"] is False and report["failed"] == ["split_size.train"]
    assert "Running stage 'pretrain'" not in proc.stdout
    assert not (tiny_project / "models/encoder.safetensors").exists()
    lock = yaml.safe_load((tiny_project / "dvc.lock").read_text())["stages"]
    assert "pretrain" not in lock and lock["validate"]["params"]["params.yaml"]["validate"]["expected_sizes"] == {
        "train": 500, "val": 100, "test": 200}  # fmt: skip
