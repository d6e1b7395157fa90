"""Checkpoint integrity: every checkpoint carries the sha256 of its bytes and is verified before loading."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from pipeline.ijepa.checkpoint import (
    CheckpointError,
    digest_path,
    file_sha256,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from tests.test_train import assert_same_tensors, make_root, run


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # dvclive looks for a repo from the cwd


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor records (model + optimizer state fill the file)
    path.write_bytes(bytes(data))


@pytest.mark.probe("checkpoint-bytes")
def test_flipped_bytes_in_the_newest_checkpoint_are_refused_naming_it(tmp_path: Path) -> None:
    root = make_root(tmp_path / "run")
    assert run(root) is not None  # finished: 12 steps, checkpoints at 8 and 12
    encoder = root / "models/encoder.safetensors"
    exported = encoder.read_bytes()
    newest = list_checkpoints(root / "models/checkpoints")[-1]
    assert newest.name == "ckpt-step0000012.pt"
    flip_middle_byte(newest)
    # the premise: torch's zip reader checks no CRC, the damaged file loads "fine"
    damaged = torch.load(newest, map_location="cpu", weights_only=True)
    assert damaged["step"] == 12
    with pytest.raises(CheckpointError) as info:
        run(root)  # a rerun of a finished run would re-export from this checkpoint
    message = str(info.value)
    assert str(newest) in message and "corrupt" in message and "sha256" in message
    assert "ckpt-step0000008.pt" in message  # how to fall back: the previous checkpoint is named
    assert encoder.read_bytes() == exported  # nothing was exported from the damaged state
    assert newest.exists()  # nothing deleted either


def test_moving_the_bad_checkpoint_away_resumes_from_the_previous_one(tmp_path: Path) -> None:
    ref, root = make_root(tmp_path / "ref"), make_root(tmp_path / "run")
    run(ref)
    assert run(root, stop_after=9) is None  # checkpoints at steps 4 and 8
    newest = list_checkpoints(root / "models/checkpoints")[-1]
    flip_middle_byte(newest)
    with pytest.raises(CheckpointError, match="ckpt-step0000008.pt: checkpoint is corrupt"):
        run(root)
    shutil.move(newest, tmp_path / newest.name)  # what the error message says to do
    report = run(root)
    assert report is not None and report["resumed_from_step"] == 4 and report["steps"] == 12
    assert_same_tensors(ref / "models/encoder.safetensors", root / "models/encoder.safetensors")


@pytest.mark.probe("checkpoint-bytes")
def test_a_checkpoint_without_its_digest_is_refused(tmp_path: Path) -> None:
    state = {"step": 3, "model": {"w": torch.ones(4)}}
    path = save_checkpoint(tmp_path / "ckpt", state)
    assert digest_path(path).read_text() == f"{file_sha256(path)}  {path.name}\n"  # `sha256sum -c` format
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(4))
    digest_path(path).unlink()
    with pytest.raises(CheckpointError, match=r"ckpt-step0000003\.pt: no digest file ckpt-step0000003\.pt\.sha256"):
        load_checkpoint(path)


def test_rotation_removes_digests_and_stale_temp_files(tmp_path: Path) -> None:
    directory = tmp_path / "ckpt"
    directory.mkdir()
    stale = directory / ".ckpt-step0000001.pt.tmp-999999"  # left by a run killed while saving
    stale.write_bytes(b"half a checkpoint")
    orphan = directory / "ckpt-step0000002.pt.sha256"  # killed between the two renames
    orphan.write_text("0" * 64 + "  ckpt-step0000002.pt\n")
    for step in (3, 4, 5):
        save_checkpoint(directory, {"step": step}, keep=2)
    names = sorted(p.name for p in directory.iterdir())
    assert names == ["ckpt-step0000004.pt", "ckpt-step0000004.pt.sha256", "ckpt-step0000005.pt",
                     "ckpt-step0000005.pt.sha256"]  # fmt: skip
