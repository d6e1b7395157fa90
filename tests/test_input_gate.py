"""Stage-level input gate: `pretrain` and `features` refuse data whose validation failed or whose shards
changed after `shard` wrote them (truncated, cut at a member boundary, edited), in one line naming the shard."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pipeline.data.integrity import InputGateError, verify_shards
from pipeline.ijepa.run_inputs import ShardReadError, count_samples
from tests.conftest import dvc
from tests.test_train import make_root, run, stage_env, write_params, write_shard_report

STAGE = [sys.executable, "-m", "stages.pretrain"]


def cut_at_member_boundary(path: Path, keep_samples: int) -> None:
    """Rewrite the tar with its first samples only: a well-formed, shorter shard (end marker included)."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for info, body in members[: 3 * keep_samples]:
            tar.addfile(info, io.BytesIO(body))


def truncate(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def pretrain_stage(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(STAGE, cwd=root, env=stage_env(), capture_output=True, text=True, timeout=300)


def refused(root: Path) -> str:
    """The gate's message when pretraining is started on `root` (library call; one line, nothing written)."""
    with pytest.raises(InputGateError) as info:
        run(root)
    message = str(info.value)
    assert "\n" not in message and not (root / "models").exists()
    return message


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("pretrain: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # dvclive looks for a repo from the cwd


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = make_root(tmp_path / "r")
    write_params(root, epochs=1)
    return root


@pytest.mark.probe("cut-shard")
def test_pretrain_refuses_data_that_failed_validation(root: Path) -> None:
    report = json.loads((root / "reports/validation.json").read_text())
    report.update(success=False, failed=["split_size.train", "class_balance.train"])
    (root / "reports/validation.json").write_text(json.dumps(report))
    message = refused(root)
    assert "reports/validation.json: the data failed validation" in message
    assert "failed checks: split_size.train, class_balance.train" in message


@pytest.mark.probe("cut-shard")
def test_pretrain_refuses_a_shard_cut_at_a_member_boundary(root: Path) -> None:
    shard = root / "data/shards/train/train-000001.tar"
    cut_at_member_boundary(shard, keep_samples=10)
    assert count_samples(root / "data/shards/train") == 58  # a valid tar: without the gate it would train
    message = refused(root)
    assert f"{root}/data/shards/train/train-000001.tar: sha256" in message and "changed after it was written" in message


@pytest.mark.probe("truncated-shard")
def test_pretrain_names_a_truncated_shard_in_one_line(root: Path) -> None:
    truncate(root / "data/shards/train/train-000000.tar")
    assert_one_line_error(pretrain_stage(root), "pretrain: error: data/shards/train/train-000000.tar: sha256")
    (root / "reports/shard.json").unlink()  # no digests to compare: refused too
    assert "reports/shard.json not found" in refused(root)
    with pytest.raises(ShardReadError, match=r"train-000000\.tar: unreadable shard \(truncated or damaged"):
        count_samples(root / "data/shards/train")


def test_pretrain_refuses_shards_that_differ_from_what_validation_counted(root: Path) -> None:
    report = json.loads((root / "reports/validation.json").read_text())
    (root / "reports/validation.json").write_text(json.dumps({**report, "count": {"train": 100}}))
    message = refused(root)
    assert "holds 96 samples but" in message and "validated 100" in message


def test_added_and_missing_shards_are_named(root: Path) -> None:
    shards = root / "data/shards/train"
    extra = shards / "train-000002.tar"
    shutil.copy(shards / "train-000000.tar", extra)
    with pytest.raises(InputGateError, match=r"train-000002\.tar: shard not listed in"):
        verify_shards(shards, root / "reports/shard.json")
    extra.unlink()
    (shards / "train-000001.tar").unlink()
    with pytest.raises(InputGateError, match=r"train-000001\.tar: listed in .*shard\.json but missing"):
        verify_shards(shards, root / "reports/shard.json")


@pytest.mark.probe("truncated-shard")
def test_features_stage_refuses_a_changed_shard(root: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from stages.features import main

    for split in ("val", "test"):
        (root / f"data/shards/{split}").mkdir()
        shutil.copy(root / "data/shards/train/train-000000.tar", root / f"data/shards/{split}/{split}-000000.tar")
    write_shard_report(root)
    truncate(root / "data/shards/test/test-000000.tar", 0.9)
    monkeypatch.chdir(root)
    assert main() == 1
    err = capsys.readouterr().err
    assert err.startswith("features: error: data/shards/test/test-000000.tar: sha256") and err.count("\n") == 1


@pytest.mark.slow
@pytest.mark.probe("cut-shard")
def test_dvc_repro_single_item_pretrain_refuses_failed_or_changed_inputs(tiny_project: Path) -> None:
    dvc(tiny_project, "repro", "validate")
    validation = tiny_project / "reports/validation.json"
    passed = validation.read_text()
    report = json.loads(passed)
    validation.write_text(json.dumps({**report, "success": False, "failed": ["split_size.train"]}))
    proc = dvc(tiny_project, "repro", "--single-item", "pretrain", check=False)
    assert proc.returncode != 0 and "the data failed validation" in proc.stderr, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and not (tiny_project / "models/encoder.safetensors").exists()

    validation.write_text(passed)
    cut_at_member_boundary(tiny_project / "data/shards/train/train-000002.tar", keep_samples=20)
    proc = dvc(tiny_project, "repro", "--single-item", "pretrain", check=False)
    assert proc.returncode != 0, proc.stdout
    assert "pretrain: error: data/shards/train/train-000002.tar: sha256" in proc.stderr, proc.stderr
    assert not (tiny_project / "models/encoder.safetensors").exists()
