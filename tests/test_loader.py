"""Training and evaluation loaders over real shards, with and without worker processes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.config import DataParams
from pipeline.data.loader import eval_loader, list_shards, to_unit_float, train_loader
from pipeline.data.shards import read_manifest, write_shards
from pipeline.data.sources import load_source


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, fake_fmnist: Path) -> Path:
    out = tmp_path_factory.mktemp("shards")
    params = DataParams(root=str(fake_fmnist), val_size=100, shard_max_count=60)
    write_shards(load_source(params), params, out / "shards", out / "manifest.csv", workers=1)
    return out


def labels_of(loader) -> list[int]:
    return [int(v) for _, labels in loader for v in labels]


@pytest.mark.parametrize("workers", [0, 2])
def test_train_loader_covers_the_split_once_per_epoch(shards: Path, workers: int) -> None:
    loader = train_loader(shards / "shards/train", 20, seed=0, num_workers=workers, shuffle_buffer=50, drop_last=False)
    images, labels, n = None, [], 0
    for images, batch_labels in loader:
        assert images.dtype == torch.uint8 and images.shape[1:] == (1, 28, 28)  # scaled by the consumer
        assert int(images.max()) > 1  # stored pixel values, not already scaled to [0, 1]
        unit = to_unit_float(images)
        assert unit.dtype == torch.float32 and float(unit.max()) <= 1.0 and to_unit_float(unit) is unit
        labels += batch_labels.tolist()
        n += len(batch_labels)
    manifest = [r for r in read_manifest(shards / "manifest.csv") if r["split"] == "train"]
    assert n == len(manifest) == 500
    assert sorted(labels) == sorted(int(r["label"]) for r in manifest)


@pytest.mark.parametrize("workers", [0, 2])
def test_train_loader_order_is_seeded(shards: Path, workers: int) -> None:
    def order(seed: int, epoch: int) -> list[int]:
        return labels_of(train_loader(shards / "shards/train", 25, seed=seed, epoch=epoch, num_workers=workers))

    first = order(0, 0)
    assert first == order(0, 0)
    assert first != order(0, 1) and first != order(1, 0)


def test_eval_loader_is_ordered_whatever_the_worker_count(shards: Path) -> None:
    expected = [r["key"] for r in read_manifest(shards / "manifest.csv") if r["split"] == "test"]
    for workers in (0, 2):
        keys = [
            k for _, _, batch_keys in eval_loader(shards / "shards/test", 32, num_workers=workers) for k in batch_keys
        ]
        assert keys == expected


def test_resampled_loader_with_fixed_epoch_length(shards: Path) -> None:
    loader = train_loader(shards / "shards/train", 10, seed=0, resampled=True, epoch_batches=7, num_workers=0)
    assert sum(1 for _ in loader) == 7


def test_collate_hook_receives_decoded_samples(shards: Path) -> None:
    def collate(samples: list) -> tuple[int, str]:
        return len(samples), samples[0][2]

    out = list(train_loader(shards / "shards/val", 10, seed=0, collate_fn=collate))
    assert [n for n, _ in out] == [10] * 10 and all(key.startswith("val-") for _, key in out)


def test_missing_shard_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_shards(tmp_path / "nope")


def test_eval_loader_streams_ordered_batches_with_a_subset(shards: Path) -> None:
    rows = [r for r in read_manifest(shards / "manifest.csv") if r["split"] == "train"]
    keep = frozenset(r["key"] for r in rows[::3])
    expected = [r["key"] for r in rows if r["key"] in keep]
    for workers in (0, 1, 2):
        batches = list(eval_loader(shards / "shards/train", 7, num_workers=workers, keep=keep))
        assert [k for _, _, keys in batches for k in keys] == expected
        assert [len(keys) for _, _, keys in batches] == [7] * (len(expected) // 7) + [len(expected) % 7]
        assert all(images.dtype == torch.float32 and images.shape[1:] == (1, 28, 28) for images, _, _ in batches)
        labels = [int(v) for _, batch_labels, _ in batches for v in batch_labels]
        assert labels == [int(r["label"]) for r in rows if r["key"] in keep]
