"""Object storage: a DVC S3 remote and shards read straight from S3 (moto's S3 server on 127.0.0.1).

- `dvc push` to the S3 remote, then a fresh `git clone` + `dvc pull` gives the same workspace with a
  clean `dvc status` (mini project; credentials and endpoint only in the environment).
- The shards published to S3 feed the training and evaluation loaders unchanged: the same batches as
  from local disk, the same sample count and run identity, the same encoder from pretraining and the
  same frozen features, with no local shard directory at all (`IJEPA_SHARD_URL`).
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner
from webdataset import TarWriter

from pipeline.cli import app
from pipeline.config import TrainParams
from pipeline.data import remote
from pipeline.data.loader import eval_loader, list_shards, train_loader
from pipeline.eval.features import build_cache
from pipeline.ijepa.run_inputs import count_samples, read_normalization, run_identity
from pipeline.ijepa.train import RunPaths, pretrain
from tests.conftest import dvc, run
from tests.fakes import class_images
from tests.mini_project import git_commit, make_mini_project
from tests.s3_server import S3Server, start_s3
from tests.test_train import MASK, MODEL, TRAIN, make_root

BUCKET = "ijepa-test"


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    server = start_s3()
    server.make_bucket(BUCKET)
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


def test_dvc_push_and_pull_into_a_fresh_clone(s3: S3Server, tmp_path: Path) -> None:
    project = make_mini_project(tmp_path / "mini")
    dvc(project, "remote", "add", "-d", "storage", f"s3://{BUCKET}/dvc-store")  # no secret in .dvc/config
    dvc(project, "repro")
    git_commit(project, "pipeline ran; S3 remote")
    assert "secret" not in (project / ".dvc" / "config").read_text().lower()
    push = dvc(project, "push")
    assert "pushed" in push.stdout
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not (clone / "models" / "model.txt").exists()  # cached outputs are not in git
    dvc(clone, "pull")
    for rel in ("data/prep.txt", "models/model.txt", "reports/eval_linear.json"):
        assert (clone / rel).read_bytes() == (project / rel).read_bytes(), rel
    status = dvc(clone, "status")
    assert "Data and pipelines are up to date" in status.stdout, status.stdout
    cloud = dvc(clone, "status", "--cloud")
    assert "Cache and remote 'storage' are in sync" in cloud.stdout, cloud.stdout
    assert "up to date" in dvc(clone, "repro").stdout  # nothing to rebuild after the pull


def add_split(root: Path, split: str, n: int, seed: int) -> None:
    out = root / "data/shards" / split
    out.mkdir(parents=True)
    labels = np.arange(n) % 10
    with TarWriter(str(out / f"{split}-000000.tar")) as tar:
        for i, img in enumerate(class_images(labels, seed=seed)):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            tar.write({"__key__": f"{split}-{i:07d}", "png": buf.getvalue(), "cls": str(labels[i]).encode(),
                       "json": json.dumps({"label": int(labels[i])}).encode()})  # fmt: skip


def drain(loader: Iterator) -> list:
    return [tuple(x.clone() if isinstance(x, torch.Tensor) else x for x in batch) for batch in loader]


def assert_same_batches(a: list, b: list) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            assert torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v


def test_training_and_features_read_shards_from_s3(s3: S3Server, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    local = make_root(tmp_path / "local")  # 2 train shards x 48
    add_split(local, "val", 20, seed=7)
    add_split(local, "test", 20, seed=8)
    url = f"s3://{BUCKET}/mirror/shards"
    result = CliRunner().invoke(app, ["publish-shards", url, "--shards", str(local / "data/shards")])
    assert result.exit_code == 0, result.output
    assert f"published 4 shards to {url}" in result.output
    train_url = f"{url}/train"
    assert [Path(u).name for u in list_shards(train_url)] == ["train-000000.tar", "train-000001.tar"]

    # the loaders yield exactly what they yield from local disk
    opts = {"seed": 5, "epoch": 1, "transform": None}
    assert_same_batches(
        drain(train_loader(local / "data/shards/train", 16, **opts)), drain(train_loader(train_url, 16, **opts))
    )
    for split in ("train", "val"):
        assert_same_batches(
            drain(eval_loader(local / "data/shards" / split, 7)), drain(eval_loader(f"{url}/{split}", 7))
        )
    assert count_samples(train_url) == count_samples(local / "data/shards/train") == 96
    params = TrainParams(**TRAIN)
    norm = read_normalization(local / "reports/validation.json")
    assert run_identity(MODEL, MASK, params, norm, train_url, 1) == run_identity(
        MODEL, MASK, params, norm, local / "data/shards/train", 1
    )  # a checkpoint of a local run resumes from the mirror and back

    # pretraining and feature extraction with no local shards: IJEPA_SHARD_URL
    cloud = tmp_path / "cloud"
    (cloud / "reports").mkdir(parents=True)
    shutil.copy2(local / "reports/validation.json", cloud / "reports/validation.json")
    monkeypatch.chdir(tmp_path)
    assert pretrain(MODEL, MASK, params, RunPaths.under(local)) is not None  # env unset: local shards
    monkeypatch.setenv(remote.ENV, url)
    assert RunPaths.under(cloud).shards == train_url
    report = pretrain(MODEL, MASK, params, RunPaths.under(cloud))
    assert report is not None and report["steps"] == 12 and not (cloud / "data").exists()
    a, b = load_file(str(local / "models/encoder.safetensors")), load_file(str(cloud / "models/encoder.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical: same bytes read

    encoder = cloud / "models/encoder.safetensors"
    build_cache(encoder, tmp_path / "nowhere", cloud / "features", batch_size=16, device="cpu", precision="fp32")
    monkeypatch.delenv(remote.ENV)
    build_cache(encoder, local / "data/shards", local / "features", batch_size=16, device="cpu", precision="fp32")
    for split in ("train", "val", "test"):
        x = np.load(cloud / "features/encoder" / f"{split}.npz")
        y = np.load(local / "features/encoder" / f"{split}.npz")
        assert np.array_equal(x["features"], y["features"]) and list(x["keys"]) == list(y["keys"])


def test_bad_shard_urls_are_clear_errors(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match=f"s3://{BUCKET}/nothing/train holds no .tar shards"):
        list_shards(f"s3://{BUCKET}/nothing/train")
    monkeypatch.setenv(remote.ENV, "/data/not-a-url")
    with pytest.raises(ValueError, match="IJEPA_SHARD_URL='/data/not-a-url' is not a URL"):
        RunPaths.under(".")
