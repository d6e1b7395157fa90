"""Photo shards of mixed sizes (keep-ratio JPEGs) train with worker-side crops, resume exactly, and evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import DataParams, MaskParams, ModelParams, TrainParams
from pipeline.data.loader import eval_loader, train_loader
from pipeline.data.shards import read_manifest, write_shards
from pipeline.data.sources import load_source
from pipeline.data.transforms import CenterCrop
from pipeline.data.validation_facts import collect_facts
from pipeline.eval.features import build_cache
from pipeline.ijepa.augment import train_transform
from pipeline.ijepa.train import RunPaths, pretrain
from tests.fakes import fake_photos
from tests.test_train import assert_same_tensors

MODEL = ModelParams(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2, pred_embed_dim=16,
                    pred_depth=1, pred_num_heads=2)  # fmt: skip
MASK = MaskParams(min_context=2)
TRAIN = dict(epochs=2, batch_size=8, num_workers=2, warmup_epochs=0.5, checkpoint_every=3, snapshots=1, log_every=2,
             augment_scale=(0.3, 1.0))  # fmt: skip


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # dvclive looks for a repo from the cwd


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/shards + manifest of 3 x 16 RGB photos, shorter side 40 (mixed sizes), + validation.json."""
    base = tmp_path_factory.mktemp("photos")
    src = fake_photos(base / "src", classes=3, per_class=16, sizes=(30, 90))
    params = DataParams(source="imagefolder", root=str(src), image_mode="RGB", image_size=40, val_fraction=0.2,
                        test_fraction=0.2, shard_max_count=10)  # fmt: skip
    root = base / "run"
    written = write_shards(load_source(params), params, root / "data/shards", root / "data/manifest.csv", workers=2)
    facts = collect_facts(root / "data/shards", root / "data/manifest.csv", ["train", "val", "test"], workers=2)
    (root / "reports").mkdir()
    (root / "reports/validation.json").write_text(json.dumps({"success": True, "normalization": facts.normalization}))
    (root / "reports/shard.json").write_text(json.dumps({"shard_sha256": written.shard_sha256}))
    return root


def copy_run(photos: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(photos, dest)
    return dest


def test_shards_hold_mixed_sizes(photos: Path) -> None:
    rows = read_manifest(photos / "data/manifest.csv")
    sizes = {(int(r["width"]), int(r["height"])) for r in rows}
    assert len(sizes) > 5 and all(min(s) == 40 for s in sizes)


def test_worker_crops_batch_mixed_sizes_and_are_seeded(photos: Path) -> None:
    crop = train_transform(32, (0.3, 1.0))

    def batches(seed: int, epoch: int) -> list[torch.Tensor]:
        loader = train_loader(photos / "data/shards/train", 8, seed=seed, epoch=epoch, num_workers=2, transform=crop)
        return [images for images, _ in loader]

    first = batches(0, 0)
    assert first and all(b.shape == (8, 3, 32, 32) and b.dtype == torch.uint8 for b in first)
    assert all(torch.equal(a, b) for a, b in zip(first, batches(0, 0), strict=True))
    assert not torch.equal(first[0], batches(0, 1)[0]) and not torch.equal(first[0], batches(1, 0)[0])
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        next(iter(train_loader(photos / "data/shards/train", 8, seed=0)))  # no transform: sizes differ


def test_kill_and_resume_with_worker_crops_is_bit_exact(photos: Path, tmp_path: Path) -> None:
    a, b = copy_run(photos, tmp_path / "a"), copy_run(photos, tmp_path / "b")
    params = TrainParams(**TRAIN)
    done = pretrain(MODEL, MASK, params, RunPaths.under(a))
    assert done is not None and done["steps"] == 6  # 30 train images / 8 = 3 steps x 2 epochs
    assert pretrain(MODEL, MASK, params, RunPaths.under(b), stop_after=5) is None  # killed; checkpoint at 3
    resumed = pretrain(MODEL, MASK, params, RunPaths.under(b))
    assert resumed is not None and resumed["resumed_from_step"] == 3
    assert_same_tensors(a / "models/encoder.safetensors", b / "models/encoder.safetensors")
    # and the crops matter: without them the run ends elsewhere
    c = copy_run(photos, tmp_path / "c")
    pretrain(MODEL, MASK, TrainParams(**{**TRAIN, "augment_scale": None}), RunPaths.under(c))
    enc_a = torch.load(a / "models/checkpoints/ckpt-step0000006.pt", weights_only=True)["model"]
    enc_c = torch.load(c / "models/checkpoints/ckpt-step0000006.pt", weights_only=True)["model"]
    assert any(not torch.equal(enc_a[k], enc_c[k]) for k in enc_a)


def test_mixed_size_shards_evaluate_with_a_centre_crop(photos: Path, tmp_path: Path) -> None:
    run = copy_run(photos, tmp_path / "e")
    pretrain(MODEL, MASK, TrainParams(**{**TRAIN, "epochs": 1}), RunPaths.under(run))
    batches = list(eval_loader(run / "data/shards/test", 4, num_workers=2, transform=CenterCrop(32, 0.875)))
    assert all(images.shape[1:] == (3, 32, 32) for images, _, _ in batches)
    expected = [r["key"] for r in read_manifest(run / "data/manifest.csv") if r["split"] == "test"]
    assert [k for _, _, keys in batches for k in keys] == expected
    index, _ = build_cache(run / "models/encoder.safetensors", run / "data/shards", run / "features",
                           manifest=run / "data/manifest.csv", batch_size=8)  # fmt: skip
    rows = read_manifest(run / "data/manifest.csv")
    assert index["split_sizes"] == {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    assert index["eval_crop"] == {"size": 32, "ratio": 0.875}
    feats = np.load(run / "features/encoder/test.npz")
    assert feats["features"].shape == (len(expected), 32) and np.isfinite(feats["features"]).all()
    assert list(feats["keys"]) == expected
    assert "raw_pixels_size" not in index and index["sets"]["raw_pixels"]["dim"] == 3 * 32 * 32  # 32 px: as is
    small, _ = build_cache(run / "models/encoder.safetensors", run / "data/shards", run / "features16",
                           manifest=run / "data/manifest.csv", batch_size=8, raw_pixels_size=16)  # fmt: skip
    assert small["raw_pixels_size"] == 16 and small["sets"]["raw_pixels"]["dim"] == 3 * 16 * 16
