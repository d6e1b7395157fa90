"""The validation gate at scale: sizes from the manifest (`expected_sizes: null`), a seeded pixel sample,
JPEG shards of mixed sizes, speed in the report."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.config import DataParams, ValidateParams
from pipeline.data.shards import shard_dataset
from pipeline.data.validation import summary_lines, validate_data
from pipeline.data.validation_facts import collect_facts
from tests.fakes import fake_photos
from tests.test_validation import good, shard_fake  # noqa: F401 - the module fixture `good`

SPLITS = ["train", "val", "test"]


def test_null_expected_sizes_check_what_the_manifest_lists(good: Path, tmp_path: Path) -> None:  # noqa: F811
    params = ValidateParams(expected_sizes=None)
    report = validate_data(good / "shards", good / "manifest.csv", params, None, workers=2)
    assert report["success"], summary_lines(report)
    assert report["expected_sizes"] == "manifest" and report["count"] == {"train": 500, "val": 100, "test": 200,
                                                                          "total": 800}  # fmt: skip
    entry = report["checks"]["split_size.val"]
    assert entry["observed"] == 100 and entry["expected"] == "in [100, 100]"
    assert "s_per_10k_images" not in report and report["pixel_images"] == {"train": 500, "val": 100, "test": 200}
    data = tmp_path / "data"
    shutil.copytree(good, data)
    (data / "shards/test/test-000001.tar").unlink()
    broken = validate_data(data / "shards", data / "manifest.csv", params, None, workers=2)
    assert {"shard_present", "sample_in_shards", "split_size.test"} <= set(broken["failed"])


def test_pixel_statistics_come_from_a_seeded_sample(good: Path) -> None:  # noqa: F811
    def facts(sample: int | None, seed: int = 0):  # noqa: ANN202
        return collect_facts(good / "shards", good / "manifest.csv", SPLITS, workers=2, pixel_sample=sample,
                             pixel_seed=seed)  # fmt: skip

    full, part = facts(None), facts(100)
    assert full.pixel_images == {"train": 500, "val": 100, "test": 200}
    assert 60 <= part.pixel_images["train"] <= 140 and part.pixel_images["val"] == 100  # val is not larger
    assert part.normalization["mean"][0] == pytest.approx(full.normalization["mean"][0], abs=0.01)
    assert part.normalization["std"][0] == pytest.approx(full.normalization["std"][0], abs=0.01)
    assert part.normalization != full.normalization
    again, other = facts(100), facts(100, seed=1)
    assert again.normalization == part.normalization and again.pixel_images == part.pixel_images
    assert other.normalization != part.normalization
    sampled = part.samples[part.samples["split"] == "train"]
    assert sampled["pixel_mean"].notna().sum() == part.pixel_images["train"]
    assert sampled["constant"].notna().all() and sampled["decodes"].all()  # integrity: every image


def test_jpeg_photo_shards_of_mixed_sizes_pass(tmp_path: Path) -> None:
    src = fake_photos(tmp_path / "src", classes=3, per_class=20, sizes=(30, 90))
    params = DataParams(source="imagefolder", root=str(src), image_mode="RGB", image_size=36, val_fraction=0.2,
                        test_fraction=0.2, shard_max_count=16)  # fmt: skip
    data = tmp_path / "data"
    shard_dataset(params, data / "shards", data / "manifest.csv", tmp_path / "shard.json", workers=2)
    report = validate_data(data / "shards", data / "manifest.csv", ValidateParams(), None, workers=2)
    assert report["success"], summary_lines(report)
    assert report["count"]["total"] == 60 and len(report["normalization"]["mean"]) == 3
    assert report["checks"]["sample_decodes"]["observed"] == 0


def test_explicit_expected_sizes_stay_an_opt_in_check(good: Path) -> None:  # noqa: F811
    params = ValidateParams(expected_sizes={"train": 5000, "val": 100, "test": 200})
    report = validate_data(good / "shards", good / "manifest.csv", params, None, workers=2)
    assert report["failed"] == ["split_size.train"] and report["expected_sizes"] == "params"
    assert report["checks"]["split_size.train"]["expected"] == "in [4900, 5100]"
    with pytest.raises(ValueError, match="expected_sizes must be null or name"):
        ValidateParams(expected_sizes={})
