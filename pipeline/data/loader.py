"""Loaders over the WebDataset shards: a shuffled training loader and an ordered eval loader.

Training: shard list shuffled per (seed, epoch) identically on every process, then split by node
(DDP rank) and by DataLoader worker; samples shuffled in a buffer seeded by (seed, epoch, rank,
worker). The same (seed, epoch, num_workers, world size) therefore gives the same batch order,
which is what exact resume relies on. `resampled=True` draws shards with replacement forever and
`epoch_batches` cuts each rank's epoch to a fixed length (needed so DDP ranks step in lock-step).
A per-sample `transform` (e.g. the random-resized crop, pipeline/data/transforms.py) runs in the
workers on the decoded uint8 image with a generator seeded by (seed, epoch, rank, world, worker): the
crops are a function of the position in that deterministic stream, so a resumed run that replays the
stream position gets exactly the crops of an uninterrupted one.

Evaluation: `eval_loader` streams the samples of a split in shard-name and tar order (the manifest
order), decoding batch by batch; with workers, batch `b` is decoded by worker `b % workers` and the
DataLoader's round-robin hands the batches back in order, so memory is a few batches per worker.

Images are PNG or JPEG members (pipeline/data/codecs.py), decoded with torchvision's libpng /
libjpeg-turbo decoders straight into uint8 tensors (`decode_tensor`; faster than PIL here, and PNG is
lossless, so the pixels are exactly PIL's). torchvision 0.29 deprecates its image codecs in favour of
TorchCodec (not a dependency here): the warning is silenced for that one call, and with a torchvision
that has dropped them, PIL decodes instead. A shard location may be a URL of object storage (s3://…):
its tars are listed and streamed through fsspec (pipeline/data/remote.py), never copied to local disk.
Every tar is read through pipeline/data/tario.py (`tar_samples`), which refuses unsafe members.
"""

from __future__ import annotations

import io
import random
import warnings
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset import tariterators

from pipeline.data import remote
from pipeline.data.codecs import image_member
from pipeline.data.sources import SPLITS
from pipeline.data.tario import iter_members

try:
    from torchvision.io import ImageReadMode, decode_image
except ImportError:  # a torchvision that dropped its image codecs: PIL below
    decode_image = None  # type: ignore[assignment]

Batch = tuple[torch.Tensor, torch.Tensor]
SampleTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def list_shards(shard_dir: Path | str) -> list[str]:
    """Sorted tar files of one split directory, or URLs of one split folder in object storage
    (pipeline/data/remote.py); a clear error when there are none."""
    if remote.is_url(shard_dir):
        return remote.list_tars(str(shard_dir))
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


def decode_tensor(data: bytes) -> torch.Tensor:
    """PNG or JPEG bytes → uint8 [C, H, W] (C = 1 for grey, 3 for RGB), via torchvision (else PIL)."""
    if decode_image is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
    return decode_pil(data)


def decode_pil(data: bytes) -> torch.Tensor:
    """PNG or JPEG bytes → uint8 [C, H, W] via PIL (the fallback, and the tests' reference)."""
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy())


def _expand(data: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for source in data:
        url, stream = source["url"], source["stream"]
        try:
            for name, body in iter_members(url, stream):
                yield {"fname": name, "data": body, "__url__": url}
        finally:
            stream.close()
        yield {}  # end of shard: webdataset's grouping never joins samples across shards


def _open(src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """webdataset's url_opener for local files; object-store URLs are streamed through fsspec."""
    for source in src:
        if remote.is_url(source["url"]):
            yield {**source, "stream": remote.open_url(source["url"])}
        else:
            yield from tariterators.url_opener([source])


def _tar_samples(src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return tariterators.group_by_keys(_expand(_open(src)))


tar_samples = wds.filters.pipelinefilter(_tar_samples)  # webdataset stage: urls in, checked samples out


def decode_sample(sample: dict) -> tuple[torch.Tensor, int, str]:
    """A raw webdataset sample (png or jpg, cls bytes) → (uint8 [C,H,W] tensor, label, key)."""
    key = sample["__key__"]
    try:
        _, data = image_member(sample)
        image = decode_tensor(data)
        label = int(sample["cls"])
    except (KeyError, OSError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{sample.get('__url__', '?')}: sample {key} cannot be decoded: {exc}") from exc
    return image, label, key


Part = tuple[int, int]  # (k, K): the k-th of K disjoint parts of the training data (pipeline/data/parts.py)


def _node(part: Part | None) -> tuple[int, int, int]:
    """(rank, world, worker) for seeding: a data part replaces the DDP rank and world size."""
    rank, world, worker, _ = wds.utils.pytorch_worker_info()
    return (part[0], part[1], worker) if part is not None else (rank, world, worker)


def _part_worker_seed(k: int) -> int:
    """ResampledShards' per-worker seed with part `k` in place of the rank (webdataset: rank * 1000 + worker)."""
    return k * 1000 + wds.utils.pytorch_worker_info()[2]


def part_shards(urls: list[str], part: Part) -> list[str]:
    """The shards of part k of K: every K-th of the sorted list, from the k-th; an error when it gets none."""
    k, n = part
    if not 0 <= k < n:
        raise ValueError(f"data part {k} of {n} does not exist")
    mine = urls[k::n]
    if not mine:
        raise ValueError(f"data part {k} of {n} gets no shard: only {len(urls)} shards; lower train.data_parts")
    return mine


def worker_generator(seed: int, epoch: int, stream: int, part: Part | None = None) -> torch.Generator:
    """A generator seeded by (seed, epoch, rank, world, DataLoader worker, stream), at iteration time;
    with a data `part` (k, K), k and K stand in for the rank and world size."""
    rank, world, worker = _node(part)
    state = np.random.SeedSequence([seed, epoch, rank, world, worker, stream]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


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

    def __init__(self, bufsize: int, seed: int, epoch: int, part: Part | None = None) -> None:
        self.bufsize, self.seed, self.epoch, self.part = bufsize, seed, epoch, part

    def run(self, src: Iterable) -> Iterator:
        rank, world, worker = _node(self.part)
        rng = random.Random(f"samples-{self.seed}-{self.epoch}-{rank}-{world}-{worker}")
        buf: list = []
        for sample in src:
            buf.append(sample)
            if len(buf) >= self.bufsize:
                yield buf.pop(rng.randrange(len(buf)))
        rng.shuffle(buf)
        yield from buf


class _SeededTransform(wds.PipelineStage):
    """Apply a per-sample transform to decoded (image, label, key), with a worker-seeded generator."""

    def __init__(self, transform: SampleTransform, seed: int, epoch: int, part: Part | None = None) -> None:
        self.transform, self.seed, self.epoch, self.part = transform, seed, epoch, part

    def run(self, src: Iterable) -> Iterator:
        gen = worker_generator(self.seed, self.epoch, stream=2, part=self.part)
        for image, label, key in src:
            yield self.transform(image, gen), label, key


def default_collate(samples: list) -> Batch:
    """Stack decoded samples into (uint8 images as stored, labels). The batch crosses the worker → main
    process boundary (and the host → GPU copy) as uint8, a quarter of float32's bytes; the consumer
    scales it (`pipeline.ijepa.augment.BatchTransform`, or `to_unit_float`)."""
    images = torch.stack([s[0] for s in samples])
    labels = torch.tensor([s[1] for s in samples], dtype=torch.long)
    return images, labels


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images → float32 in [0, 1] (float input is returned as it is)."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


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
    transform: SampleTransform | None = None,
    collate_fn: Callable[[list], object] | None = None,
    drop_last: bool = True,
    part: Part | None = None,
) -> Iterable:
    """Shuffled batches over the shards of one split (see the module docstring for the seeding).

    `transform(uint8 image, generator) -> uint8 image` runs per sample in the workers (needed when
    the stored images are not all of one size); `collate_fn` receives a list of (image, label, key)
    with uint8 images (the default gives uint8 images and labels: `to_unit_float` scales them): the hook
    for the mask collator. `part=(k, K)`: read only data part k of K (`part_shards`), drawn with replacement
    and seeded by k in place of the DDP rank, so that what a part yields does not depend on which
    process reads it (multi-node training, pipeline/data/parts.py); needs `epoch_batches`.
    """
    urls = list_shards(shard_dir)
    rank, world = _rank_world()
    if part is not None:
        if epoch_batches is None:
            raise ValueError("a data part is read with replacement: give epoch_batches")
        shards = wds.ResampledShards(part_shards(urls, part), seed=seed * 1000 + epoch * 7919, deterministic=True,
                                     worker_seed=partial(_part_worker_seed, part[0]))  # fmt: skip
    elif resampled:
        shards = wds.ResampledShards(urls, seed=seed * 1000 + epoch * 7919 + rank, deterministic=True)
    else:
        shards = wds.SimpleShardList(urls)
    stages: list = [shards]
    if not resampled and part is None:
        stages += [_SeededShardShuffle(seed, epoch), wds.split_by_node]
    stages += [
        wds.split_by_worker,
        tar_samples(),
        _WorkerSampleShuffle(shuffle_buffer, seed, epoch, part),
        wds.map(decode_sample),
    ]
    if transform is not None:
        stages.append(_SeededTransform(transform, seed, epoch, part))
    stages.append(wds.batched(batch_size, collation_fn=collate_fn or default_collate, partial=not drop_last))
    pipeline = wds.DataPipeline(*stages)
    if epoch_batches is not None:
        pipeline = pipeline.with_epoch(max(1, epoch_batches // max(1, num_workers)))
    # own generator: the loader's base seed never draws from (and so never advances) the global RNG, whose
    # state the training checkpoints store; a resumed run re-creating this loader then saves the same bytes
    generator = torch.Generator().manual_seed(seed * 1000 + epoch * 7919 + rank)
    return DataLoader(pipeline, batch_size=None, num_workers=num_workers, persistent_workers=False, generator=generator)


class _OrderedBatches(IterableDataset):
    """The split's samples in order, cut into batches; worker w of W decodes batches w, w + W, ...

    Every worker reads the tar stream (cheap) but decodes only its own batches, so the DataLoader's
    round-robin over workers returns the batches in order. Yields (uint8 images, labels, keys).
    """

    def __init__(
        self, urls: list[str], batch_size: int, keep: frozenset[str] | None, transform: SampleTransform | None
    ) -> None:
        self.urls, self.batch_size, self.keep, self.transform = urls, batch_size, keep, transform

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        pipeline = wds.DataPipeline(wds.SimpleShardList(self.urls), tar_samples())
        n, buf = 0, []
        for sample in pipeline:
            if self.keep is not None and sample["__key__"] not in self.keep:
                continue
            mine = (n // self.batch_size) % workers == worker
            n += 1
            if not mine:
                continue
            image, label, key = decode_sample(sample)
            buf.append((self.transform(image, None) if self.transform is not None else image, label, key))  # type: ignore[arg-type]
            if len(buf) == self.batch_size:
                yield _stack(buf)
                buf = []
        if buf:
            yield _stack(buf)


def _stack(samples: list[tuple[torch.Tensor, int, str]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    try:
        images = torch.stack([s[0] for s in samples])
    except RuntimeError as exc:
        sizes = sorted({tuple(s[0].shape) for s in samples})
        raise ValueError(
            f"samples {samples[0][2]}..{samples[-1][2]} have different sizes {sizes[:4]}: pass a transform "
            f"(e.g. pipeline.data.transforms.CenterCrop) that brings them to the model's size"
        ) from exc
    return images, torch.tensor([s[1] for s in samples], dtype=torch.long), [s[2] for s in samples]


def eval_loader(
    shard_dir: Path | str,
    batch_size: int,
    num_workers: int = 0,
    *,
    keep: frozenset[str] | None = None,
    transform: SampleTransform | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """Ordered (float images in [0,1], labels, keys) batches: shards in name order, samples in tar
    order (the manifest order), whatever `num_workers` is. `keep`: only these keys (still in order);
    `transform(uint8 image, None) -> uint8 image` per sample (the evaluation resize + centre crop)."""
    dataset = _OrderedBatches(list_shards(shard_dir), batch_size, keep, transform)
    for images, labels, keys in DataLoader(dataset, batch_size=None, num_workers=num_workers):
        yield to_unit_float(images), labels, keys
