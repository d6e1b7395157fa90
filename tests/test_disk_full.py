"""A full disk while checkpointing or exporting: one clear error naming the file, no temp file left, the
previous files intact. On a real, tiny tmpfs mounted under the run (needs root: skipped otherwise), and
the errno detection on the exceptions torch and safetensors actually raise."""

from __future__ import annotations

import errno
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pipeline.atomic import NoSpaceError, is_no_space, replacing, write_json_atomic
from pipeline.config import TrainParams
from pipeline.ijepa.checkpoint import list_checkpoints, load_checkpoint
from pipeline.ijepa.train import RunPaths, pretrain
from tests.test_train import MASK, MODEL, TRAIN, make_root, stage_env, write_params


def fill(directory: Path) -> Path:
    """Write a filler file until the filesystem is full; returns it."""
    filler = directory / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if ".tmp" in p.name)


@pytest.fixture
def small_models(tmp_path: Path) -> Iterator[Path]:
    """A run directory whose `models/` is a 4 MB tmpfs."""
    root = make_root(tmp_path / "run")
    mount = root / "models"
    mount.mkdir()
    mount_cmd = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)]
    proc = subprocess.run(mount_cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.probe("disk-full")
def test_disk_full_while_checkpointing(small_models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = small_models
    monkeypatch.chdir(root)
    params = TrainParams(**{**TRAIN, "snapshots": 0})
    assert pretrain(MODEL, MASK, params, RunPaths.under(root), stop_after=5) is None  # checkpoint at step 4
    [good] = list_checkpoints(root / "models/checkpoints")
    good_bytes = good.read_bytes()
    fill(root / "models")
    with pytest.raises(NoSpaceError) as info:
        pretrain(MODEL, MASK, params, RunPaths.under(root))  # resumes; the step-8 checkpoint does not fit
    message = str(info.value)
    assert message.startswith(f"no space left writing {root}/models/checkpoints/ckpt-step0000008.pt (")
    assert "temp file was removed" in message
    assert leftovers(root / "models") == []
    assert list_checkpoints(root / "models/checkpoints") == [good] and good.read_bytes() == good_bytes
    assert load_checkpoint(good)["step"] == 4  # still verifies


@pytest.mark.probe("disk-full")
def test_disk_full_while_exporting_through_the_stage(small_models: Path) -> None:
    root = small_models
    write_params(root)
    stage = [sys.executable, "-m", "stages.pretrain"]
    done = subprocess.run(stage, cwd=root, env=stage_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    encoder = root / "models/encoder.safetensors"
    before = {p: p.read_bytes() for p in (encoder, encoder.with_suffix(".json"))}
    fill(root / "models")
    again = subprocess.run(stage, cwd=root, env=stage_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "Traceback" not in again.stderr, again.stderr
    errors = [line for line in again.stderr.splitlines() if line.startswith("pretrain: error:")]
    assert len(errors) == 1, again.stderr
    assert errors[0].startswith("pretrain: error: no space left writing models/encoder.safetensors (")
    assert {p: p.read_bytes() for p in before} == before  # the previous encoder is intact
    assert leftovers(root / "models") == []


@pytest.mark.probe("disk-full")
def test_no_space_is_recognised_in_what_torch_and_safetensors_raise(tmp_path: Path) -> None:
    class FullDisk:
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self) -> None:
            pass

    with pytest.raises((RuntimeError, OSError)) as info:  # torch may wrap it ("unexpected pos ...")
        torch.save({"w": torch.zeros(1000)}, FullDisk())
    assert is_no_space(info.value)
    rust = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert is_no_space(rust) and not is_no_space(RuntimeError("shape mismatch (os error 2)"))

    target, tmp = tmp_path / "report.json", tmp_path / ".report.json.tmp"
    write_json_atomic(target, {"old": True})
    no_space = pytest.raises(NoSpaceError, match=r"no space left writing .*report\.json .*previous report\.json")
    with no_space, replacing(target, tmp):
        tmp.write_text("half")
        torch.save({"w": torch.zeros(1000)}, FullDisk())
    assert not tmp.exists() and target.read_text() == '{\n  "old": true\n}\n'
    with pytest.raises(ValueError, match="not a disk problem"), replacing(target, tmp):
        raise ValueError("not a disk problem")  # other errors pass through unchanged
