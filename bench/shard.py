"""Benchmark: sharding speed for all of Fashion-MNIST, and loader throughput shards vs loose files.

Run from the project root: `python bench/shard.py [--root /usr/share/datasets/fashion-mnist]`.
Everything is measured in one run on the same machine, so the ratios are what to quote.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from pipeline.config import DataParams
from pipeline.data.loader import default_collate, train_loader
from pipeline.data.shards import read_manifest, write_shards
from pipeline.data.sources import load_source


class LooseFiles(Dataset):
    """The same images as individual PNG files (the baseline the shards are compared with)."""

    def __init__(self, files: list[tuple[Path, int]]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        path, label = self.files[i]
        with Image.open(path) as im:
            arr = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy())[None]
        return arr, label, path.name


def samples_per_s(loader, limit: int) -> float:
    n, start = 0, time.perf_counter()
    for images, _labels in loader:
        n += len(images)
        if n >= limit:
            break
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loader-samples", type=int, default=20000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    params = DataParams(root=args.root)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        rates = []
        for r in range(args.repeats):
            dataset = load_source(params)
            result = write_shards(dataset, params, tmp_path / "shards", tmp_path / "manifest.csv")
            rates.append(result.images / result.wall_s)
            print(f"shard run {r}: {result.images} images in {result.wall_s:.2f} s = {rates[-1]:.0f} images/s")
        rows = [r for r in read_manifest(tmp_path / "manifest.csv") if r["split"] == "train"]
        loose_dir = tmp_path / "loose"
        loose_dir.mkdir()
        files = []
        for row, item in zip(rows, dataset.splits["train"], strict=True):
            path = loose_dir / f"{row['key']}.png"
            item.load().save(path)
            files.append((path, int(row["label"])))
        print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
        print(f"sharding (70k images, {args.repeats} runs): median {statistics.median(rates):.0f} images/s")
        for workers in (0, 2):
            shard_rate = samples_per_s(
                train_loader(tmp_path / "shards/train", 256, seed=0, num_workers=workers), args.loader_samples
            )
            loose = DataLoader(LooseFiles(files), batch_size=256, shuffle=True, num_workers=workers,
                               collate_fn=default_collate)  # fmt: skip
            loose_rate = samples_per_s(loose, args.loader_samples)
            print(
                f"loader, {workers} workers: shards {shard_rate:.0f} samples/s, loose files {loose_rate:.0f} "
                f"samples/s, ratio shards/loose {shard_rate / loose_rate:.2f}"
            )


if __name__ == "__main__":
    main()
