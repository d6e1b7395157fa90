"""The streaming shard writer on photo folders: flat memory, worker-count independence, `keep`
bytes, keep-ratio sizes, JPEG re-encoding, duplicates removed before the split, cleanup on failure."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import DataParams
from pipeline.data.shards import read_manifest, shard_dataset, shard_report, write_shards
from pipeline.data.sources import CorruptImageError, load_source
from tests.fakes import fake_photos


def photo_params(root: Path, **over: object) -> DataParams:
    base = {"source": "imagefolder", "root": str(root), "image_mode": "RGB", "val_fraction": 0.2,
            "test_fraction": 0.2, "shard_max_count": 7}  # fmt: skip
    return DataParams(**{**base, **over})


def members(out: Path) -> dict[str, dict[str, bytes]]:
    """{key: {ext: bytes}} over every tar under `out`."""
    found: dict[str, dict[str, bytes]] = {}
    for tar_path in sorted(out.rglob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar:
                key, ext = m.name.split(".", 1)
                found.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return found


def digests(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*"))
            if p.is_file()}  # fmt: skip


def noise_pngs(root: Path, n: int) -> Path:
    """`n` incompressible 96x96 RGB PNGs (~27 KB each) in two classes."""
    rng = np.random.default_rng(n)
    for i in range(n):
        d = root / f"class_{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(d / f"{i:04d}.png")
    return root


def peak_bytes(tmp: Path, n: int) -> int:
    params = photo_params(noise_pngs(tmp / f"src{n}", n), shard_max_count=10_000, shard_max_bytes=1 << 30)
    dataset = load_source(params)
    tracemalloc.start()
    try:
        write_shards(dataset, params, tmp / f"out{n}/shards", tmp / f"out{n}/manifest.csv", workers=1)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_writer_memory_does_not_grow_with_the_dataset(tmp_path: Path) -> None:
    small, large = peak_bytes(tmp_path, 60), peak_bytes(tmp_path, 240)  # one shard per split either way
    # an in-memory writer holds every encoded image of a split: +180 x 27 KB ≈ 4.9 MB
    assert large < 1.2 * small + 300_000, (small, large)


def test_a_folder_source_holds_under_half_a_kilobyte_per_image(tmp_path: Path) -> None:
    """What `shard` must hold for the split of a folder is its index (a million entries for ImageNet):
    slotted items with the root and params shared: 0.27 KB per image (functools.partial items: 0.75 KB)."""
    for i in range(2000):
        (tmp_path / f"src/class_{i % 4}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (2, 2), (i % 256, 0, 0)).save(tmp_path / f"src/class_{i % 4}/image_{i:06d}.png")
    params = photo_params(tmp_path / "src")
    load_source(params)  # first call: imports and caches outside the measurement
    tracemalloc.start()
    try:
        dataset = load_source(params)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    n = sum(len(items) for items in dataset.splits.values())
    assert n == 2000 and held / n < 450, held / n


def test_shards_are_byte_identical_with_one_and_two_workers(tmp_path: Path) -> None:
    root = fake_photos(tmp_path / "src", classes=2, per_class=30)
    params = photo_params(root, image_size=32, encoding="jpeg")
    for workers in (1, 2):
        dataset = load_source(params)
        write_shards(dataset, params, tmp_path / f"w{workers}/shards", tmp_path / f"w{workers}/manifest.csv", workers)
    one, two = digests(tmp_path / "w1/shards"), digests(tmp_path / "w2/shards")
    assert one == two and len(one) == 10  # 36 train, 12 val, 12 test in shards of <= 7: 6 + 2 + 2
    manifest = [(tmp_path / f"w{w}/manifest.csv").read_text().replace(str(tmp_path / f"w{w}"), "") for w in (1, 2)]
    assert manifest[0] == manifest[1]


def test_keep_stores_the_source_bytes_exactly(tmp_path: Path) -> None:
    root = fake_photos(tmp_path / "jpg", classes=2, per_class=6)
    fake_photos(tmp_path / "jpg", classes=2, per_class=3, seed=1, suffix=".png")  # img_000{0,1,2}.png beside
    Image.new("L", (30, 20), 90).save(root / "class_0/grey.jpg")  # mode L: converted to RGB, not kept
    params = photo_params(root, encoding="keep")
    dataset = load_source(params)
    result = write_shards(dataset, params, tmp_path / "out/shards", tmp_path / "out/manifest.csv", workers=2)
    stored = members(tmp_path / "out/shards")
    rows = read_manifest(tmp_path / "out/manifest.csv")
    by_source = {json.loads(m["json"])["source_id"]: (key, m) for key, m in stored.items()}
    assert len(by_source) == len(rows) == 6 * 2 + 3 * 2 + 1
    for source_id, (_, m) in by_source.items():
        ext = "png" if source_id.endswith(".png") else "jpg"
        assert set(m) == {ext, "cls", "json"}, source_id
        if source_id != "class_0/grey.jpg":
            assert hashlib.sha256(m[ext]).hexdigest() == hashlib.sha256((root / source_id).read_bytes()).hexdigest()
    grey = by_source["class_0/grey.jpg"][1]["jpg"]
    assert grey != (root / "class_0/grey.jpg").read_bytes() and Image.open(io.BytesIO(grey)).mode == "RGB"
    assert result.kept == len(rows) - 1 and result.stored == {"jpg": 13, "png": 6}


def test_keep_ratio_sets_the_shorter_side_and_keeps_the_aspect(tmp_path: Path) -> None:
    root = fake_photos(tmp_path / "src", classes=2, per_class=10, sizes=(30, 120))
    params = photo_params(root, image_size=48)
    assert params.resize == "keep-ratio" and params.stored_encoding == "keep"
    dataset = load_source(params)
    write_shards(dataset, params, tmp_path / "out/shards", tmp_path / "out/manifest.csv", workers=1)
    rows = {r["key"]: r for r in read_manifest(tmp_path / "out/manifest.csv")}
    sizes = set()
    for key, m in members(tmp_path / "out/shards").items():
        src = Image.open(root / json.loads(m["json"])["source_id"])
        img = Image.open(io.BytesIO(m["jpg"]))  # resized JPEGs stay JPEG under `keep`
        assert min(img.size) == 48 and (img.width, img.height) == (int(rows[key]["width"]), int(rows[key]["height"]))
        long_src, short_src = max(src.size), min(src.size)
        assert max(img.size) == round(long_src * 48 / short_src)
        assert (img.width >= img.height) == (src.width >= src.height)
        sizes.add(img.size)
    assert len(sizes) > 5  # mixed sizes in the shards


def test_png_encoding_is_lossless(tmp_path: Path) -> None:
    root = fake_photos(tmp_path / "src", classes=2, per_class=5)
    params = photo_params(root, image_size=40, encoding="png")
    dataset = load_source(params)
    write_shards(dataset, params, tmp_path / "out/shards", tmp_path / "out/manifest.csv", workers=1)
    stored = members(tmp_path / "out/shards")
    assert all(set(m) == {"png", "cls", "json"} for m in stored.values())
    item = dataset.splits["train"][0]
    first = next(m for m in stored.values() if json.loads(m["json"])["source_id"] == item.source_id)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(first["png"]))), np.asarray(item.load()))


def test_duplicates_are_removed_before_the_split_and_listed(tmp_path: Path) -> None:
    root = fake_photos(tmp_path / "src", classes=2, per_class=20)
    shutil.copy(root / "class_0/img_0003.jpg", root / "class_0/zz_copy.jpg")
    shutil.copy(root / "class_0/img_0003.jpg", root / "class_1/zz_copy.jpg")  # same pixels, other class
    shutil.copy(root / "class_1/img_0007.jpg", root / "class_1/zz_copy2.jpg")
    params = photo_params(root, deduplicate=True)
    report = shard_dataset(params, tmp_path / "out/shards", tmp_path / "out/manifest.csv", tmp_path / "shard.json", 2)
    assert report["duplicates_count"] == 3
    assert sorted((d["path"], d["duplicate_of"]) for d in report["duplicates"]) == [
        ("class_0/zz_copy.jpg", "class_0/img_0003.jpg"),
        ("class_1/zz_copy.jpg", "class_0/img_0003.jpg"),
        ("class_1/zz_copy2.jpg", "class_1/img_0007.jpg"),
    ]
    written = {
        **json.loads((tmp_path / "shard.json").read_text()),
        **json.loads((tmp_path / "timings/shard.json").read_text()),
    }
    assert report["count"]["total"] == 40 and written == report  # the report, its timings beside it
    sources = [json.loads(m["json"])["source_id"] for m in members(tmp_path / "out/shards").values()]
    assert not any("zz_copy" in s for s in sources) and len(set(sources)) == 40
    assert report["source_bytes"] == sum((root / s).stat().st_size for s in sources)  # the copies not counted
    assert (
        report["bytes_ratio"] == round(report["bytes"] / report["source_bytes"], 4) and report["stored"]["kept"] == 40
    )
    kept = load_source(params.model_copy(update={"deduplicate": False}))
    assert sum(len(v) for v in kept.splits.values()) == 43


def test_failure_removes_the_staging_directory(tmp_path: Path) -> None:
    root = fake_photos(tmp_path / "src", classes=2, per_class=12)
    (root / "class_1/img_0005.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 40)  # a broken JPEG
    params = photo_params(root, image_size=32)
    dataset = load_source(params)
    for workers in (1, 2):
        with pytest.raises(CorruptImageError, match="img_0005"):
            write_shards(dataset, params, tmp_path / "out/shards", tmp_path / "out/manifest.csv", workers)
        assert list((tmp_path / "out").iterdir()) == []  # no staging directory, no shards, no manifest
    ok = write_shards(dataset, params.model_copy(update={"on_corrupt": "skip"}), tmp_path / "out/shards",
                      tmp_path / "out/manifest.csv", 2)  # fmt: skip
    assert [s["path"] for s in ok.skipped] == ["class_1/img_0005.jpg"]
    report = shard_report(dataset, ok, tmp_path / "out/manifest.csv")
    assert report["count"]["total"] == 23 and report["stored"]["jpg"] == 23
    assert report["bytes"] == sum(p.stat().st_size for p in (tmp_path / "out/shards").rglob("*.tar"))
    assert report["shard_sha256"] == {
        p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in report["shard_sha256"]
    }


def test_sample_tar_writes_what_webdataset_tarwriter_writes(tmp_path: Path) -> None:
    from webdataset import TarWriter

    from pipeline.data.shard_writer import SampleTar, _HashingFile

    rng = np.random.default_rng(0)
    samples = [{"__key__": f"train-{i:07d}", "png": rng.bytes(int(rng.integers(1, 3000))), "cls": b"3",
                "json": b'{"a": 1}', **({"jpg": rng.bytes(700)} if i % 3 == 0 else {})} for i in range(25)]  # fmt: skip
    with open(tmp_path / "ours.tar", "wb") as fh:
        tar = SampleTar(_HashingFile(fh))
        for sample in samples:
            tar.write(sample)
        tar.close()
    with (
        open(tmp_path / "wds.tar", "wb") as fh,
        TarWriter(fh, user="", group="", mode=0o444, mtime=0, encoder=False) as w,
    ):
        for sample in samples:
            w.write(sample)
    assert (tmp_path / "ours.tar").read_bytes() == (tmp_path / "wds.tar").read_bytes()
