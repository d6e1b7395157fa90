"""Sources, shard writer and manifest: round trip, determinism, splits, bad inputs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import DataParams
from pipeline.data.shards import read_manifest, shard_report, write_shards
from pipeline.data.sources import CorruptImageError, SourceError, load_source, stratified_split
from tests.fakes import fake_imagefolder


def shard(params: DataParams, out: Path):
    dataset = load_source(params)
    result = write_shards(dataset, params, out / "shards", out / "manifest.csv", workers=2)
    return dataset, result


def tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def test_round_trip_manifest_matches_tars(tmp_path: Path, fake_fmnist: Path) -> None:
    params = DataParams(root=str(fake_fmnist), val_size=100, shard_max_count=150)
    dataset, result = shard(params, tmp_path)
    rows = read_manifest(tmp_path / "manifest.csv")
    assert Counter(r["split"] for r in rows) == {"train": 500, "val": 100, "test": 200}
    by_key = {r["key"]: r for r in rows}
    seen = 0
    for tar_path in sorted((tmp_path / "shards").rglob("*.tar")):
        for key, members in tar_samples(tar_path).items():
            row = by_key[key]
            assert Path(row["shard"]).name == tar_path.name
            assert int(members["cls"]) == int(row["label"])
            assert hashlib.sha256(members["png"]).hexdigest() == row["sha256"]
            meta = json.loads(members["json"])
            assert meta["sha256"] == row["sha256"] and meta["label"] == int(row["label"])
            img = Image.open(io.BytesIO(members["png"]))
            assert (img.width, img.height, img.mode) == (int(row["width"]), int(row["height"]), row["mode"])
            seen += 1
    assert seen == len(rows) == 800
    report = shard_report(dataset, result, tmp_path / "manifest.csv")
    assert report["count"]["train"] == 500 and report["shards"]["train"] == 4  # 150 per shard
    assert sum(report["class_count"]["val"].values()) == 100
    assert all(v == 10 for v in report["class_count"]["val"].values())  # stratified


def test_sharding_is_byte_deterministic_and_seed_changes_split(tmp_path: Path, fake_fmnist: Path) -> None:
    params = DataParams(root=str(fake_fmnist), val_size=100, shard_max_count=150)
    shard(params, tmp_path / "a")
    shard(params, tmp_path / "b")
    digests = {}
    for run in ("a", "b"):
        digests[run] = {
            p.relative_to(tmp_path / run).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((tmp_path / run).rglob("*.tar"))
        }
    assert digests["a"] == digests["b"] and len(digests["a"]) == 7  # 4 train + 1 val + 2 test
    manifest_a = (tmp_path / "a/manifest.csv").read_text().replace(str(tmp_path / "a"), "")
    assert manifest_a == (tmp_path / "b/manifest.csv").read_text().replace(str(tmp_path / "b"), "")
    shard(params.model_copy(update={"seed": 1}), tmp_path / "c")
    val_a = {r["sha256"] for r in read_manifest(tmp_path / "a/manifest.csv") if r["split"] == "val"}
    val_c = {r["sha256"] for r in read_manifest(tmp_path / "c/manifest.csv") if r["split"] == "val"}
    assert val_a != val_c and len(val_a) == len(val_c) == 100


def test_stratified_split_is_seeded_and_balanced() -> None:
    labels = np.repeat(np.arange(4), [40, 30, 20, 10])
    hold, rest = stratified_split(labels, 10, seed=3)
    assert len(hold) == 10 and len(rest) == 90 and not set(hold) & set(rest)
    assert Counter(labels[hold].tolist()) == {0: 4, 1: 3, 2: 2, 3: 1}
    assert np.array_equal(hold, stratified_split(labels, 10, seed=3)[0])
    assert not np.array_equal(hold, stratified_split(labels, 10, seed=4)[0])


def test_missing_fashion_mnist_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="apt-get install -y dataset-fashion-mnist"):
        load_source(DataParams(root=str(tmp_path / "nowhere")))


def test_imagefolder_mixed_sizes_and_modes(tmp_path: Path) -> None:
    root = fake_imagefolder(tmp_path / "imgs", classes=3, per_class=20)
    params = DataParams(source="imagefolder", root=str(root), image_mode="RGB", image_size=24, resize="center-crop",
                        val_fraction=0.2, test_fraction=0.2)  # fmt: skip
    dataset, result = shard(params, tmp_path / "out")
    rows = read_manifest(tmp_path / "out/manifest.csv")
    assert len(rows) == 60 and dataset.classes == ["class_0", "class_1", "class_2"]
    assert Counter(r["split"] for r in rows) == {"train": 36, "val": 12, "test": 12}
    assert {(r["width"], r["height"], r["mode"]) for r in rows} == {("24", "24", "RGB")}
    grey = load_source(params.model_copy(update={"image_mode": "L", "image_size": None}))
    sizes = {item.load().size for item in grey.splits["train"]}
    assert len(sizes) > 3  # sizes kept when image_size is None
    assert {item.load().mode for item in grey.splits["train"]} == {"L"}


def _bad_inputs(root: Path, kind: str) -> str:
    d = root / "class_0"
    if kind == "corrupt":
        (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
        return "class_0/broken.png"
    if kind == "non_image":
        (d / "notes.txt").write_text("not an image")
        return "class_0/notes.txt"
    if kind == "zero_byte":
        (d / "empty.png").write_bytes(b"")
        return "class_0/empty.png"
    if kind == "symlink_escape":
        outside = root.parent / "secret.png"
        Image.new("L", (8, 8)).save(outside)
        (d / "link.png").symlink_to(outside)
        return "class_0/link.png"
    if kind == "empty_class":
        (root / "class_9").mkdir()
        return "class_9/"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["corrupt", "non_image", "zero_byte", "symlink_escape", "empty_class"])
def test_bad_input_fails_naming_the_file_or_is_skipped_and_listed(tmp_path: Path, kind: str) -> None:
    root = fake_imagefolder(tmp_path / "imgs", classes=2, per_class=10)
    bad = _bad_inputs(root, kind)
    params = DataParams(source="imagefolder", root=str(root), val_fraction=0.2, test_fraction=0.2)
    with pytest.raises(CorruptImageError) as info:
        shard(params, tmp_path / "fail")
    assert info.value.path == bad
    assert not (tmp_path / "fail/shards").exists() and not (tmp_path / "fail/manifest.csv").exists()

    dataset, result = shard(params.model_copy(update={"on_corrupt": "skip"}), tmp_path / "skip")
    assert [s["path"] for s in result.skipped] == [bad]
    assert result.skipped[0]["reason"]
    rows = read_manifest(tmp_path / "skip/manifest.csv")
    assert len(rows) == 20  # every good image kept
    report = shard_report(dataset, result, tmp_path / "skip/manifest.csv")
    assert report["skipped_count"] == 1 and report["skipped"][0]["path"] == bad


def test_no_partial_shards_survive_a_failure(tmp_path: Path) -> None:
    root = fake_imagefolder(tmp_path / "imgs", classes=2, per_class=10)
    params = DataParams(source="imagefolder", root=str(root), val_fraction=0.2, test_fraction=0.2)
    shard(params, tmp_path / "out")
    before = sorted(p.name for p in (tmp_path / "out/shards").rglob("*.tar"))
    _bad_inputs(root, "corrupt")
    with pytest.raises(CorruptImageError):
        shard(params, tmp_path / "out")
    after = sorted(p.name for p in (tmp_path / "out/shards").rglob("*"))
    assert [p for p in after if p.endswith(".tar")] == before  # previous good output untouched
    assert not any(p.endswith(".tmp") for p in after)
