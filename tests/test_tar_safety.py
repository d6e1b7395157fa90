"""Every reader of the shards refuses a tar member with `..`, an absolute name, or a link, naming the shard."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest

from pipeline.config import DataParams, ValidateParams
from pipeline.data.loader import eval_loader, train_loader
from pipeline.data.shards import write_shards
from pipeline.data.sources import load_source
from pipeline.data.tario import UnsafeTarError
from pipeline.data.validation import validate_data
from pipeline.data.validation_facts import collect_facts
from pipeline.eval.features import split_batches
from pipeline.ijepa.run_inputs import count_samples

BAD = {
    "dotdot": ("../x.png", tarfile.REGTYPE),
    "absolute": ("/etc/x.png", tarfile.REGTYPE),
    "symlink": ("train-0009999.png", tarfile.SYMTYPE),
    "hardlink": ("train-0009998.png", tarfile.LNKTYPE),
}


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory, fake_fmnist: Path) -> Path:
    out = tmp_path_factory.mktemp("safe")
    params = DataParams(root=str(fake_fmnist), val_size=100, shard_max_count=150)
    write_shards(load_source(params), params, out / "shards", out / "manifest.csv", workers=1)
    return out


def poison(data: Path, kind: str) -> Path:
    """Insert one bad member after the first sample of train-000001.tar; returns that tar."""
    name, type_ = BAD[kind]
    path = data / "shards/train/train-000001.tar"
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for i, (info, body) in enumerate(members):
            tar.addfile(info, io.BytesIO(body))
            if i == 2:
                bad = tarfile.TarInfo(name)
                bad.type = type_
                if type_ == tarfile.REGTYPE:
                    bad.size = 3
                    tar.addfile(bad, io.BytesIO(b"abc"))
                else:
                    bad.linkname = "/etc/passwd" if type_ == tarfile.SYMTYPE else info.name
                    tar.addfile(bad)
    return path


@pytest.fixture(params=sorted(BAD))
def bad(request: pytest.FixtureRequest, good: Path, tmp_path: Path) -> tuple[Path, str]:
    data = tmp_path / "data"
    shutil.copytree(good, data)
    return data, str(poison(data, request.param))


@pytest.mark.probe("unsafe-tar")
def test_train_and_eval_loaders_refuse(bad: tuple[Path, str]) -> None:
    data, shard = bad
    with pytest.raises(UnsafeTarError, match=rf"{shard}: refusing tar member"):
        for _ in train_loader(data / "shards/train", 10, seed=0):
            pass
    with pytest.raises(UnsafeTarError, match=rf"{shard}: refusing tar member"):
        list(eval_loader(data / "shards/train", 64))
    with pytest.raises(UnsafeTarError, match=shard):
        list(split_batches(data / "shards/train", 32, keep=frozenset({"train-0000200"})))


def test_loader_workers_refuse_too(good: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(good, data)
    shard = str(poison(data, "dotdot"))
    with pytest.raises(Exception, match=rf"(?s)UnsafeTarError.*{shard}: refusing tar member '\.\./x\.png'"):
        for _ in train_loader(data / "shards/train", 10, seed=0, num_workers=2):
            pass
    with pytest.raises(Exception, match=rf"(?s)UnsafeTarError.*{shard}: refusing tar member"):
        list(eval_loader(data / "shards/train", 64, num_workers=2))


@pytest.mark.probe("unsafe-tar")
def test_sample_count_refuses(bad: tuple[Path, str]) -> None:
    data, shard = bad
    with pytest.raises(UnsafeTarError, match=rf"{shard}: refusing tar member"):
        count_samples(data / "shards/train")


@pytest.mark.probe("unsafe-tar")
def test_validation_marks_the_shard_unreadable_naming_it(bad: tuple[Path, str]) -> None:
    data, shard = bad
    facts = collect_facts(data / "shards", data / "manifest.csv", ["train", "val", "test"], workers=2)
    row = facts.shards.set_index("shard").loc["train/train-000001.tar"]
    assert row["readable"] is False and row["error"].startswith(f"UnsafeTarError: {shard}: refusing tar member")


def test_validation_gate_fails_on_an_unsafe_member(good: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(good, data)
    poison(data, "dotdot")
    params = ValidateParams(expected_sizes={"train": 500, "val": 100, "test": 200})
    report = validate_data(data / "shards", data / "manifest.csv", params, None, workers=1)
    assert not report["success"] and "shard_readable" in report["failed"]
    examples = report["checks"]["shard_readable"]["examples"]
    assert examples.startswith("train/train-000001.tar (error=UnsafeTarError: ") and "'../x.png'" in examples


def test_good_shards_read_everywhere(good: Path) -> None:
    assert count_samples(good / "shards/train") == 500
    assert sum(len(k) for _, _, k in eval_loader(good / "shards/train", 64, num_workers=2)) == 500
