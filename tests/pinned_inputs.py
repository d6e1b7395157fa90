"""Digests of what the model is fed, on an RNG-free dataset: the pin that keeps Fashion-MNIST runs
bit-identical across changes of the data path (tests/test_pinned_inputs.py).

`digests(tmp)` shards a Fashion-MNIST look-alike whose pixels are integer arithmetic (no random
generator, so no library version can change them), then hashes (sha256 of the raw bytes):

- `train`: the float32 tensor handed to the model at each of the first steps of a pretraining run
  with `train.augment_scale: null` (2 loader workers), captured at `IJEPA.forward`;
- `eval.<split>`: every batch of the ordered evaluation loader (images, labels, keys) per split;
- `eval_subset`: the batches of the feature extractor's subset path (`split_batches` with `keep`).

The values pinned in the test were computed by this file against the data path before issue 13
(commit 709f16f). It uses only APIs that exist there and here, so it can run against both.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from tests.fakes import write_idx

STEPS = 6


def arithmetic_images(n: int, offset: int) -> np.ndarray:
    """uint8 [n, 28, 28]: distinct, class-free patterns from integer arithmetic only."""
    i = np.arange(n, dtype=np.int64)[:, None, None] + offset
    y, x = np.mgrid[0:28, 0:28].astype(np.int64)
    return ((i * 37 + y * (i % 7 + 3) * 11 + x * (i % 5 + 1) * 7 + (x * y) // (i % 3 + 1)) % 256).astype(np.uint8)


def write_dataset(root: Path, n_train: int = 300, n_test: int = 100) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n, off in (("train", n_train, 0), ("t10k", n_test, 10_000)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", arithmetic_images(n, off))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) * 7 + off) % 10)
    return root


def _sha(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def digests(tmp: Path) -> dict[str, object]:
    from pipeline.config import DataParams, MaskParams, ModelParams, TrainParams
    from pipeline.data.loader import eval_loader
    from pipeline.data.shards import write_shards
    from pipeline.data.sources import load_source
    from pipeline.eval.features import split_batches
    from pipeline.ijepa import model as model_mod
    from pipeline.ijepa.train import RunPaths, pretrain

    src = write_dataset(tmp / "src")
    data = DataParams(root=str(src), val_size=50, shard_max_count=70)
    root = tmp / "run"
    written = write_shards(load_source(data), data, root / "data/shards", root / "data/manifest.csv", workers=1)
    (root / "reports").mkdir(parents=True)
    norm = {"mean": [0.4987], "std": [0.2891]}
    (root / "reports/validation.json").write_text(json.dumps({"success": True, "normalization": norm}))
    (root / "reports/shard.json").write_text(json.dumps({"shard_sha256": written.shard_sha256}))

    fed: list[str] = []
    original = model_mod.IJEPA.forward

    def recording(self, images, masks, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        fed.append(_sha(images.detach().cpu()))
        return original(self, images, masks, *args, **kwargs)

    model_mod.IJEPA.forward = recording
    try:
        pretrain(
            ModelParams(embed_dim=32, depth=2, num_heads=2, pred_embed_dim=16, pred_depth=1, pred_num_heads=2),
            MaskParams(),
            TrainParams(
                epochs=1,
                batch_size=16,
                num_workers=2,
                augment_scale=None,
                checkpoint_every=1000,
                snapshots=0,
                log_every=1000,
            ),  # fmt: skip
            RunPaths.under(root),
            stop_after=STEPS,
        )
    finally:
        model_mod.IJEPA.forward = original

    out: dict[str, object] = {"train": fed}
    for split in ("train", "val", "test"):
        out[f"eval.{split}"] = [
            _sha(images, labels) + ":" + ",".join(keys)
            for images, labels, keys in eval_loader(root / "data/shards" / split, 32, num_workers=2)
        ]
    keep = frozenset(f"train-{n:07d}" for n in range(0, 250, 3))
    out["eval_subset"] = [
        _sha(images, labels) + ":" + ",".join(keys)
        for images, labels, keys in split_batches(root / "data/shards/train", 20, keep)
    ]
    return out


def summary(d: dict[str, object]) -> dict[str, str]:
    """One sha256 per entry (the lists are long); what the test pins."""
    return {k: hashlib.sha256(json.dumps(v).encode()).hexdigest() for k, v in d.items()}


if __name__ == "__main__":
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="wt13-pin-") as t:
        print(json.dumps(summary(digests(Path(t))), indent=2))
    sys.exit(0)
