"""Bad source inputs: empty class directories, several unusable files at once, and no staging left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import DataParams, ValidateParams
from pipeline.data.images import MAX_REPORTED, CorruptImageError, UnusableInputsError
from pipeline.data.shards import read_manifest, shard_report, write_shards
from pipeline.data.sources import load_source
from pipeline.data.validation import validate_data
from tests.conftest import dvc, set_params
from tests.fakes import fake_fashion_mnist, fake_imagefolder


def params_for(root: Path, **over: object) -> DataParams:
    return DataParams(source="imagefolder", root=str(root), val_fraction=0.2, test_fraction=0.2, **over)


def shard(params: DataParams, out: Path) -> tuple:
    dataset = load_source(params)
    return dataset, write_shards(dataset, params, out / "shards", out / "manifest.csv", workers=2)


@pytest.mark.probe("empty-class")
def test_an_empty_class_dir_is_dropped_and_listed_with_skip(tmp_path: Path) -> None:
    root = fake_imagefolder(tmp_path / "imgs", classes=4, per_class=10)
    for p in (root / "class_2").iterdir():
        p.unlink()
    (root / "class_2/notes.txt").write_text("no image here")  # only an unusable file left
    dataset, result = shard(params_for(root, on_corrupt="skip"), tmp_path / "out")
    assert dataset.classes == ["class_0", "class_1", "class_3"]
    rows = read_manifest(tmp_path / "out/manifest.csv")
    assert sorted({int(r["label"]) for r in rows}) == [0, 1, 2]  # no label index without images
    assert {r["class_name"] for r in rows if r["label"] == "2"} == {"class_3"}
    skipped = {s["path"]: s["reason"] for s in shard_report(dataset, result, tmp_path / "out/manifest.csv")["skipped"]}
    assert skipped["class_2/"] == "class directory holds no usable image; class dropped, labels renumbered"
    assert "class_2/notes.txt" in skipped
    report = validate_data(tmp_path / "out/shards", tmp_path / "out/manifest.csv", ValidateParams(), None, workers=1)
    assert report["success"], report["failed"]  # label_range / class_balance hold on what was kept


@pytest.mark.probe("empty-class")
def test_an_empty_class_dir_fails_naming_it(tmp_path: Path) -> None:
    root = fake_imagefolder(tmp_path / "imgs", classes=3, per_class=10)
    (root / "class_9").mkdir()
    with pytest.raises(CorruptImageError, match=r"class_9/: class directory holds no usable image"):
        shard(params_for(root), tmp_path / "out")
    assert not any((tmp_path / "out").rglob("*"))  # no shards, manifest or staging


@pytest.mark.probe("corrupt-all")
def test_on_corrupt_fail_lists_every_unusable_file(tmp_path: Path) -> None:
    root = fake_imagefolder(tmp_path / "imgs", classes=2, per_class=10)
    (root / "class_0/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))  # found when decoding
    (root / "class_1/broken.jpg").write_bytes(b"\xff\xd8\xff" + os.urandom(64))
    (root / "class_0/empty.png").write_bytes(b"")  # found when listing
    (root / "class_1/notes.txt").write_text("not an image")
    with pytest.raises(UnusableInputsError) as info:
        shard(params_for(root), tmp_path / "out")
    paths = sorted(e.path for e in info.value.errors)
    assert paths == ["class_0/broken.png", "class_0/empty.png", "class_1/broken.jpg", "class_1/notes.txt"]
    message = str(info.value)
    assert message.startswith("4 unusable input file(s):") and "there may be more" not in message
    for path in paths:
        assert f"\n  {path}: " in message
    assert not any((tmp_path / "out").rglob("*"))  # no shards, manifest or staging


@pytest.mark.probe("corrupt-all")
def test_on_corrupt_fail_stops_looking_at_the_cap(tmp_path: Path) -> None:
    root = fake_imagefolder(tmp_path / "imgs", classes=2, per_class=4)
    for i in range(MAX_REPORTED + 20):
        (root / f"class_0/empty_{i:03d}.png").write_bytes(b"")
    with pytest.raises(UnusableInputsError) as info:
        shard(params_for(root), tmp_path / "out")
    assert len(info.value.errors) == MAX_REPORTED
    assert str(info.value).startswith(f"{MAX_REPORTED} unusable input file(s); stopped looking after {MAX_REPORTED}")


@pytest.mark.probe("shard-staging")
def test_a_failed_dvc_shard_run_leaves_no_staging_behind(tiny_project: Path, tmp_path: Path) -> None:
    root = fake_imagefolder(tmp_path / "imgs", classes=2, per_class=10)
    (root / "class_1/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    set_params(tiny_project, {"data": {"source": "imagefolder", "root": str(root)}})
    proc = dvc(tiny_project, "repro", "shard", check=False)
    assert proc.returncode != 0
    assert "shard: error: 1 unusable input file(s):\n  class_1/broken.png: cannot decode image" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tiny_project / "data/shards.staging").exists() and not (tiny_project / "data/shards").exists()


@pytest.mark.probe("shard-staging")
def test_an_interrupted_shard_run_leaves_no_staging_behind(tiny_project: Path, tmp_path: Path) -> None:
    # 10k images in 2,500 small tars: seconds of writing, so the interrupt lands mid-run even when a
    # loaded machine starves this polling loop (the 800-image fixture once finished before it)
    big = fake_fashion_mnist(tmp_path / "big-fmnist", n_train=8000, n_test=2000)
    set_params(tiny_project, {"data": {"root": str(big), "shard_max_count": 4}})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # the stage with SIGINT handled, as under the Prefect runner (flows/dvc_runner.py): this process may
    # have inherited an *ignored* SIGINT (`make test &`, or DVC's in-process runner), and so would the stage
    stage = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
             "runpy.run_module('stages.shard', run_name='__main__', alter_sys=True)")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", stage], cwd=tiny_project, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    staging = tiny_project / "data/shards.staging"
    deadline = time.monotonic() + 120
    while not any(staging.glob("*/*.tar")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)  # what the Prefect runner sends first when it stops a stage
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, "the stage finished before it could be interrupted"
    assert "KeyboardInterrupt" in err, err
    assert not staging.exists(), err
    assert not (tiny_project / "data/shards").exists()
