"""The data-validation gate in-process: real shards of the fake dataset, then one defect at a time."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import DataParams, ValidateParams
from pipeline.data.loader import eval_loader
from pipeline.data.shards import shard_dataset
from pipeline.data.tario import iter_members
from pipeline.data.validation import SUITE, run_validation, summary_lines, validate_data
from tests.conftest import TINY
from tests.fakes import class_images, write_idx

PARAMS = ValidateParams(**TINY["validate"])


def shard_fake(root: Path, fmnist: Path) -> Path:
    """Shard a fake Fashion-MNIST with the TINY data params into root/data; returns root/data."""
    data = root / "data"
    params = DataParams(root=str(fmnist), **TINY["data"])
    shard_dataset(params, data / "shards", data / "manifest.csv", root / "reports/shard.json", workers=1)
    return data


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory, fake_fmnist: Path) -> Path:
    return shard_fake(tmp_path_factory.mktemp("good"), fake_fmnist)


@pytest.fixture
def data(good: Path, tmp_path: Path) -> Path:
    """A private copy of the good shards + manifest, free to damage."""
    shutil.copytree(good, tmp_path / "data")
    return tmp_path / "data"


def check(data: Path, params: ValidateParams = PARAMS, docs: Path | None = None) -> tuple[dict, str]:
    report = validate_data(data / "shards", data / "manifest.csv", params, docs, workers=1)
    return report, "\n".join(summary_lines(report))


def rewrite_tar(path: Path, edit: Callable[[str, bytes], bytes | None]) -> None:
    """Rewrite a tar member by member; `edit(name, body)` returns the new body, or None to drop it."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(path, "w") as tar:
        for info, body in members:
            new = edit(info.name, body)
            if new is not None:
                info.size = len(new)
                tar.addfile(info, io.BytesIO(new))


def member(path: Path, name: str) -> bytes:
    with tarfile.open(path) as tar:
        return tar.extractfile(name).read()


def edit_manifest(path: Path, key: str, **changes: str) -> None:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        if row["key"] == key:
            row.update(changes)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def copy_image(data: Path, src: tuple[str, str], dst: tuple[str, str]) -> None:
    """Make sample dst=(tar, key) hold the PNG of src=(tar, key), keeping its json and manifest consistent."""
    png = member(data / "shards" / src[0], f"{src[1]}.png")
    sha = hashlib.sha256(png).hexdigest()

    def edit(name: str, body: bytes) -> bytes:
        if name == f"{dst[1]}.png":
            return png
        if name == f"{dst[1]}.json":
            return json.dumps({**json.loads(body), "sha256": sha}, sort_keys=True).encode()
        return body

    rewrite_tar(data / "shards" / dst[0], edit)
    edit_manifest(data / "manifest.csv", dst[1], sha256=sha)


def failed(report: dict) -> set[str]:
    return set(report["failed"])


def test_default_data_passes_with_train_normalization_and_data_docs(good: Path, tmp_path: Path) -> None:
    report, summary = check(good, docs=tmp_path / "docs")
    assert report["success"] and not report["failed"] and not report["warnings"], summary
    assert summary.startswith("validate: OK")
    assert report["count"] == {"train": 500, "val": 100, "test": 200, "total": 800}
    assert report["checks_total"] == len(report["checks"]) >= 50
    assert all(c["success"] and c["severity"] == "error" for c in report["checks"].values())
    assert report["checks"]["split_size.train"]["observed"] == 500
    assert report["checks"]["sample_decodes"] == {"success": True, "severity": "error", "expected": "0 unexpected",
                                                  "observed": 0}  # fmt: skip
    # normalization = mean/std over every train pixel, computed independently through the eval loader
    pixels = torch_pixels(good / "shards/train")
    norm = report["normalization"]
    assert norm["mean"] == pytest.approx([pixels.mean()], abs=1e-5)
    assert norm["std"] == pytest.approx([pixels.std()], abs=1e-5)
    index = (tmp_path / "docs/index.html").read_text()
    for frame in ("manifest", "samples", "shards", "splits"):
        assert f"{SUITE}.{frame}" in index
    assert list((tmp_path / "docs/validations").rglob("*.html"))


def torch_pixels(split_dir: Path) -> np.ndarray:
    return np.concatenate([images.numpy().ravel() for images, _, _ in eval_loader(split_dir, 256)]).astype(np.float64)


def test_corrupted_sample_inside_a_tar(data: Path) -> None:
    rewrite_tar(data / "shards/train/train-000001.tar",
                lambda n, b: b"not a png" if n == "train-0000160.png" else b)  # fmt: skip
    report, summary = check(data)
    assert not report["success"]
    assert failed(report) == {"sample_decodes", "sample_sha256", "sample_meta"}
    assert "sample_decodes [error]: observed 1 unexpected (train-0000160 (decode_error=" in summary


def test_deleted_shard(data: Path) -> None:
    (data / "shards/train/train-000002.tar").unlink()
    report, summary = check(data)
    assert {"shard_present", "sample_in_shards", "split_size.train"} <= failed(report)
    assert "shard_present [error]: observed 1 unexpected (train/train-000002.tar)" in summary
    assert "split_size.train [error]: observed 350; expected in [475, 525]" in summary


def test_stray_and_truncated_shards(data: Path) -> None:
    shutil.copy(data / "shards/test/test-000001.tar", data / "shards/test/test-000009.tar")
    tar = data / "shards/val/val-000000.tar"
    tar.write_bytes(tar.read_bytes()[:20_000])
    report, summary = check(data)
    assert {"shard_known", "shard_readable", "sample_key_unique"} <= failed(report)
    assert "shard_known [error]: observed 1 unexpected (test/test-000009.tar)" in summary
    assert "shard_readable [error]: observed 1 unexpected (val/val-000000.tar (error=ReadError: " in summary


def test_manifest_hash_mismatch(data: Path) -> None:
    edit_manifest(data / "manifest.csv", "val-0000042", sha256="0" * 64)
    report, summary = check(data)
    assert failed(report) == {"sample_sha256"}
    assert "sample_sha256 [error]: observed 1 unexpected (val-0000042)" in summary


def test_label_out_of_range_and_bad_hash_format(data: Path) -> None:
    edit_manifest(data / "manifest.csv", "train-0000003", label="10")
    edit_manifest(data / "manifest.csv", "test-0000005", sha256="XYZ")
    report, summary = check(data)
    assert {"label_range", "sample_label", "sha256_format"} <= failed(report)
    assert "label_range [error]: observed 1 unexpected (train-0000003 (label=10))" in summary
    assert "sha256_format [error]: observed 1 unexpected (test-0000005 (sha256=XYZ))" in summary


def test_manifest_missing_column(data: Path) -> None:
    path = data / "manifest.csv"
    lines = [",".join(line.split(",")[:-1]) for line in path.read_text().splitlines()]  # drop sha256
    path.write_text("\n".join(lines) + "\n")
    report, summary = check(data)
    assert "manifest_columns [error]: observed missing sha256" in summary
    assert {"manifest_columns", "sample_sha256"} <= failed(report)


def test_same_image_in_train_and_test_is_leakage(data: Path) -> None:
    copy_image(data, ("train/train-000000.tar", "train-0000000"), ("test/test-000000.tar", "test-0000007"))
    report, summary = check(data)
    assert failed(report) == {"no_split_leakage"}
    assert "no_split_leakage [error]: observed 2 unexpected" in summary
    assert "train-0000000 (split=train" in summary and "test-0000007 (split=test" in summary


def test_duplicate_inside_a_split_is_gated_by_max_duplicate_rate(data: Path) -> None:
    copy_image(data, ("train/train-000000.tar", "train-0000000"), ("train/train-000003.tar", "train-0000460"))
    report, _ = check(data)
    assert report["success"] and report["checks"]["duplicate_rate.train"]["observed"] == pytest.approx(1 / 500)
    report, summary = check(data, PARAMS.model_copy(update={"max_duplicate_rate": 0.0}))
    assert failed(report) == {"duplicate_rate.train"}
    assert "duplicate_rate.train [error]: observed 0.002; expected <= 0" in summary


def test_emptied_class_fails_class_balance(tmp_path: Path) -> None:
    labels = np.arange(600) % 10
    labels[labels == 3] = 4  # class 3 only in the test split
    test_labels = np.arange(200) % 10
    fm = tmp_path / "fm"
    fm.mkdir()
    for prefix, lab in (("train", labels), ("t10k", test_labels)):
        write_idx(fm / f"{prefix}-images-idx3-ubyte.gz", class_images(lab, seed=len(lab)))
        write_idx(fm / f"{prefix}-labels-idx1-ubyte.gz", lab)
    report, summary = check(shard_fake(tmp_path, fm))
    assert failed(report) == {"class_balance.train", "class_balance.val"}
    assert "class_balance.train [error]: observed 0; expected >= 0.5" in summary


def test_split_far_from_expected_size(good: Path) -> None:
    report, summary = check(
        good, PARAMS.model_copy(update={"expected_sizes": {"train": 5000, "val": 100, "test": 200}})
    )
    assert failed(report) == {"split_size.train"}
    assert "split_size.train [error]: observed 500; expected in [4750, 5250]" in summary


def test_warning_severity_reports_without_failing(good: Path) -> None:
    strict = PARAMS.model_copy(update={"pixel_mean_range": (0.9, 1.0)})
    report, _ = check(good, strict)
    assert failed(report) == {"pixel_mean.train", "pixel_mean.val", "pixel_mean.test"}
    lenient = strict.model_copy(update={"severity": {"pixel_mean": "warning", "pixel_mean.test": "error"}})
    report, summary = check(good, lenient)
    assert not report["success"] and report["failed"] == ["pixel_mean.test"]
    assert report["warnings"] == ["pixel_mean.train", "pixel_mean.val"]
    entry = report["checks"]["pixel_mean.train"]
    assert entry["success"] is False and entry["severity"] == "warning" and entry["expected"] == "in [0.9, 1]"
    assert 0.3 < entry["observed"] < 0.6
    assert "  ! pixel_mean.train [warning]: observed" in summary
    report, summary = check(good, strict.model_copy(update={"severity": {"pixel_mean": "warning"}}))
    assert report["success"] and report["warnings_failed"] == 3
    assert summary.startswith("validate: OK: 51 of 54 checks passed on 800 images (3 warnings)")


def test_run_validation_writes_report_on_bad_input(tmp_path: Path, good: Path) -> None:
    code, report = run_validation(tmp_path / "nowhere", good / "manifest.csv", PARAMS, tmp_path / "r.json", None)
    assert code == 1 and "does not exist" in json.loads((tmp_path / "r.json").read_text())["error"]
    bad = PARAMS.model_copy(update={"severity": {"pixl_mean": "warning"}})
    code, report = run_validation(good / "shards", good / "manifest.csv", bad, tmp_path / "r.json", None)
    assert code == 1 and "pixl_mean" in report["error"] and "pixel_mean" in summary_lines(report)[0]


def test_cli_validates_any_shard_directory(data: Path, tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(json.dumps({"validate": TINY["validate"]}))
    args = ["validate", "--shards", str(data / "shards"), "--manifest", str(data / "manifest.csv"),
            "--params", str(tmp_path / "params.yaml"), "--report", str(tmp_path / "v.json"), "--no-docs"]  # fmt: skip
    ok = CliRunner().invoke(app, args)
    assert ok.exit_code == 0, ok.output
    assert "validate: OK" in ok.stdout and "normalization (train)" in ok.stdout
    (data / "shards/val/val-000000.tar").unlink()
    bad = CliRunner().invoke(app, args)
    assert bad.exit_code == 1
    assert "shard_present [error]" in bad.stderr and "val/val-000000.tar" in bad.stderr
    assert "Traceback" not in bad.output
    assert json.loads((tmp_path / "v.json").read_text())["success"] is False


def test_tar_reader_matches_tarfile_and_reads_pax_headers(good: Path, tmp_path: Path) -> None:
    shard = good / "shards/val/val-000000.tar"
    with tarfile.open(shard) as tar:
        expected = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
    assert list(iter_members(str(shard))) == expected and len(expected) == 300
    pax = tmp_path / "pax.tar"
    with tarfile.open(pax, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("d/" + "x" * 120 + ".png")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    assert list(iter_members(str(pax))) == [("d/" + "x" * 120 + ".png", b"abc")]
