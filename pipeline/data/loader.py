"""Loaders over the WebDataset shards: a shuffled training loader and an ordered eval loader.

Training: shard list shuffled per (seed, epoch) identically on every process, then split by node
(DDP rank) and by DataLoader worker; samples shuffled in a buffer seeded by (seed, epoch, rank,
worker). The same (seed, epoch, num_workers, world size) therefore gives the same batch order,
which is what exact resume relies on. `resampled=True` draws shards with replacement forever and
`epoch_batches` cuts each rank's epoch to a fixed length (needed so DDP ranks step in lock-step).
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader

from pipeline.data.sources import SPLITS

Batch = tuple[torch.Tensor, torch.Tensor]


def list_shards(shard_dir: Path | str) -> list[str]:
    """Sorted tar files of one split directory; a clear error when there are none."""
    shard_dir = Path(shard_dir)
    if not shard_dir.is_dir():
        hint = f" (expected one of {', '.join(SPLITS)} under data/shards; run `dvc repro shard`)"
        raise FileNotFoundError(f"shard directory {shard_dir} does not exist{hint}")
    shards = sorted(str(p) for p in shard_dir.glob("*.tar"))
    if not shards:
        raise FileNotFoundError(f"shard directory {shard_dir} holds no .tar shards")
    return shards


def pixel_to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL image → float32 [C, H, W] in [0, 1]."""
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy()).float().div_(255.0)


def decode_sample(sample: dict) -> tuple[torch.Tensor, int, str]:
    """A raw webdataset sample (png/cls bytes) → (uint8 [C,H,W] tensor, label, key)."""
    key = sample["__key__"]
    try:
        with Image.open(io.BytesIO(sample["png"])) as im:
            arr = np.asarray(im, dtype=np.uint8)
        label = int(sample["cls"])
    except (KeyError, OSError, ValueError) as exc:
        raise ValueError(f"{sample.get('__url__', '?')}: sample {key} cannot be decoded: {exc}") from exc
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy()), label, key


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class _SeededShardShuffle(wds.PipelineStage):
    """Shuffle the shard list the same way on every rank and worker for a given (seed, epoch)."""

    def __init__(self, seed: int, epoch: int) -> None:
        self.seed, self.epoch = seed, epoch

    def run(self, src: Iterable) -> Iterator:
        items = list(src)
        random.Random(f"shards-{self.seed}-{self.epoch}").shuffle(items)
        yield from items


class _WorkerSampleShuffle(wds.PipelineStage):
    """Buffer shuffle whose RNG is seeded by (seed, epoch, rank, worker) at iteration time."""

    def __init__(self, bufsize: int, seed: int, epoch: int) -> None:
        self.bufsize, self.seed, self.epoch = bufsize, seed, epoch

    def run(self, src: Iterable) -> Iterator:
        rank, world, worker, _ = wds.utils.pytorch_worker_info()
        rng = random.Random(f"samples-{self.seed}-{self.epoch}-{rank}-{world}-{worker}")
        buf: list = []
        for sample in src:
            buf.append(sample)
            if len(buf) >= self.bufsize:
                yield buf.pop(rng.randrange(len(buf)))
        rng.shuffle(buf)
        yield from buf


def default_collate(samples: list) -> Batch:
    """Stack decoded samples into (float images in [0,1], labels)."""
    images = torch.stack([s[0] for s in samples]).float().div_(255.0)
    labels = torch.tensor([s[1] for s in samples], dtype=torch.long)
    return images, labels


def train_loader(
    shard_dir: Path | str,
    batch_size: int,
    *,
    seed: int,
    epoch: int = 0,
    num_workers: int = 0,
    shuffle_buffer: int = 2000,
    resampled: bool = False,
    epoch_batches: int | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    collate_fn: Callable[[list], object] | None = None,
    drop_last: bool = True,
) -> Iterable:
    """Shuffled batches over the shards of one split (see the module docstring for the seeding).

    `transform` maps one float [C,H,W] image; `collate_fn` receives a list of (image, label, key)
    with uint8 images (the default gives float images in [0,1] and labels) — the hook for the mask
    collator.
    """
    urls = list_shards(shard_dir)
    rank, world = _rank_world()
    if resampled:
        shards = wds.ResampledShards(urls, seed=seed * 1000 + epoch * 7919 + rank, deterministic=True)
    else:
        shards = wds.SimpleShardList(urls)
    stages: list = [shards]
    if not resampled:
        stages += [_SeededShardShuffle(seed, epoch), wds.split_by_node]
    stages += [
        wds.split_by_worker,
        wds.tarfile_to_samples(),
        _WorkerSampleShuffle(shuffle_buffer, seed, epoch),
        wds.map(decode_sample),
    ]
    if transform is not None:
        stages.append(wds.map(lambda s: ((transform(s[0].float().div(255.0)) * 255.0), s[1], s[2])))
    stages.append(wds.batched(batch_size, collation_fn=collate_fn or default_collate, partial=not drop_last))
    pipeline = wds.DataPipeline(*stages)
    if epoch_batches is not None:
        pipeline = pipeline.with_epoch(max(1, epoch_batches // max(1, num_workers)))
    return DataLoader(pipeline, batch_size=None, num_workers=num_workers, persistent_workers=False)


class _WholeShards(torch.utils.data.Dataset):
    """Map-style dataset whose item i is all of shard i, decoded: (uint8 images, labels, keys)."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls

    def __len__(self) -> int:
        return len(self.urls)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        samples = [
            decode_sample(s) for s in wds.DataPipeline(wds.SimpleShardList([self.urls[i]]), wds.tarfile_to_samples())
        ]
        if not samples:
            raise ValueError(f"{self.urls[i]}: shard holds no samples")
        images = torch.stack([s[0] for s in samples])
        labels = torch.tensor([s[1] for s in samples], dtype=torch.long)
        return images, labels, [s[2] for s in samples]


def eval_loader(shard_dir: Path | str, batch_size: int, num_workers: int = 0) -> Iterator:
    """Ordered (float images in [0,1], labels, keys) batches: shards in name order, samples in tar
    order (the manifest order), whatever `num_workers` is (workers decode whole shards)."""
    urls = list_shards(shard_dir)
    shards = DataLoader(_WholeShards(urls), batch_size=None, num_workers=min(num_workers, len(urls)))
    pending: list[tuple[torch.Tensor, torch.Tensor, list[str]]] = []
    count = 0
    for images, labels, keys in shards:
        pending.append((images, labels, keys))
        count += len(keys)
        while count >= batch_size:
            images_all = torch.cat([p[0] for p in pending])
            labels_all = torch.cat([p[1] for p in pending])
            keys_all = [k for p in pending for k in p[2]]
            yield images_all[:batch_size].float().div_(255.0), labels_all[:batch_size], keys_all[:batch_size]
            pending = [(images_all[batch_size:], labels_all[batch_size:], keys_all[batch_size:])]
            count -= batch_size
    if count:
        yield (
            torch.cat([p[0] for p in pending]).float().div_(255.0),
            torch.cat([p[1] for p in pending]),
            [k for p in pending for k in p[2]],
        )
