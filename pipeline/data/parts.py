"""Data parts: how the training data is divided between processes and nodes (DDP, multi-node).

The training data is cut into K parts (`train.data_parts`; default: one per process). Part k reads
only the shards k, k+K, ... of the sorted shard list, draws them with replacement, seeded by (seed,
data epoch, k, DataLoader worker), and yields `epoch_batches` batches per data epoch
(`pipeline.data.loader.train_loader(part=(k, K))`). The global batch of an update is the
concatenation of one batch of every part, in part order. The process of rank r in a world of W reads
parts r·K/W … (r+1)·K/W − 1 and takes the matching rows of the global batch's masks
(`pipeline.ijepa.distributed.local_masks`), so every node opens only its own shards and the global
batch, and with it the trained model, depends on K and not on how many processes share the parts:
one process with K = 2 and batch 2B trains the encoder of two nodes with K = 2 and batch B each (up to
fp32 reduction order; tests/test_multinode.py).

One process with `data_parts` unset (or 1) keeps the plain epoch loader (every sample once per epoch,
shards shuffled), unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from pipeline.config import TrainParams
from pipeline.data.loader import SampleTransform, train_loader


def resolve_parts(data_parts: int | None, world: int, batch_size: int) -> int:
    """K for a run of `world` processes of `batch_size` images each; clear errors naming the params."""
    parts = world if data_parts is None else data_parts
    if parts % world:
        raise ValueError(f"train.data_parts={parts} is not a multiple of the {world} processes")
    per_rank = parts // world
    if batch_size % per_rank:
        raise ValueError(f"train.batch_size={batch_size} cannot be shared by the {per_rank} data parts each of the "
                         f"{world} processes reads (train.data_parts={parts})")  # fmt: skip
    return parts


def rank_parts(rank: int, world: int, parts: int) -> range:
    """The parts that process `rank` of `world` reads."""
    per_rank = parts // world
    return range(rank * per_rank, (rank + 1) * per_rank)


def part_batches(
    shards: Path | str,
    batch_size: int,
    *,
    parts: range,
    of: int,
    seed: int,
    epoch: int,
    epoch_batches: int,
    num_workers: int = 0,
    transform: SampleTransform | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 images, labels) of one process: `batch_size` images per batch, `batch_size / len(parts)`
    from each of its parts, concatenated in part order; `epoch_batches` batches per data epoch."""
    share = batch_size // len(parts)
    opts = {"seed": seed, "epoch": epoch, "num_workers": num_workers, "epoch_batches": epoch_batches}
    loaders = [train_loader(shards, share, transform=transform, part=(k, of), **opts) for k in parts]
    if len(loaders) == 1:
        yield from loaders[0]
        return
    for parts in zip(*loaders, strict=False):
        yield torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def rank_loader(
    shards: Path | str,
    params: TrainParams,
    rank: int,
    world: int,
    *,
    epoch: int,
    epoch_batches: int,
    transform: SampleTransform | None = None,
) -> Iterable:
    """The batches process `rank` of `world` trains on in data epoch `epoch`: its data parts
    (`part_batches`) when the data is cut into more than one, else the plain epoch loader."""
    n_parts = resolve_parts(params.data_parts, world, params.batch_size)
    if n_parts == 1:
        return train_loader(shards, params.batch_size, seed=params.seed, epoch=epoch, num_workers=params.num_workers,
                            transform=transform)  # fmt: skip
    return part_batches(shards, params.batch_size, parts=rank_parts(rank, world, n_parts), of=n_parts, seed=params.seed,
                        epoch=epoch, epoch_batches=epoch_batches, num_workers=params.num_workers,
                        transform=transform)  # fmt: skip
