"""Supervised ceiling of the default budget: the same encoder architecture, data stream, crops and
step count as the default pretraining run, trained WITH labels (cross-entropy on a linear head over
the average-pooled tokens), then evaluated by exactly the eval stages' protocol (features, linear
probe with C selected on val, honest 10-shot, centred kNN, collapse measures) beside the baselines.

It answers "how far can any pretraining of this model in this budget move the linear probe?": an
I-JEPA encoder is not expected to beat an encoder trained on the labels themselves.

Usage (repo root, after `dvc repro validate`):

    python bench/supervised_ceiling.py NAME '{"train": {"epochs": 2}}' [--lr 1e-3] [--out /tmp/tune]

Overrides use the same JSON as bench/tune_pretrain.py (sections model and train are read). Prints one
summary line and appends it to `<out>/results.jsonl`. Run alone: two runs on 2 cores measure the scheduler.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm
from tune_pretrain import probe_encoder, record, section

from pipeline.config import EvalParams, ModelParams, TrainParams
from pipeline.data.loader import train_loader
from pipeline.ijepa.augment import BatchTransform, train_transform
from pipeline.ijepa.export import encoder_meta, save_encoder
from pipeline.ijepa.layers import tune_cpu_allocator
from pipeline.ijepa.model import VisionTransformerEncoder
from pipeline.ijepa.run_inputs import count_samples, read_normalization
from pipeline.ijepa.schedules import Schedules, lr_at, run_length


def train_supervised(
    model_p: ModelParams, train_p: TrainParams, norm: dict, lr: float, num_classes: int = 10
) -> tuple[nn.Module, dict]:
    """Encoder + linear head trained with cross-entropy over the default stream; returns (encoder, report)."""
    shards = Path("data/shards/train")
    steps_per_epoch = count_samples(shards) // train_p.batch_size
    total = run_length(train_p, steps_per_epoch)
    warmup = Schedules.from_params(train_p, steps_per_epoch, total).warmup_steps
    torch.manual_seed(train_p.seed)
    encoder = VisionTransformerEncoder.from_params(model_p)
    head = nn.Linear(model_p.embed_dim, num_classes)
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr, weight_decay=0.05, fused=True)
    transform = BatchTransform(model_p.img_size, norm["mean"], norm["std"])
    crop = train_transform(model_p.img_size, train_p.augment_scale)  # in the loader workers, as in pretraining
    start, step, loss = time.perf_counter(), 0, torch.tensor(float("nan"))
    bar = tqdm(total=total, desc="supervised", unit="step")
    epoch = 0
    while step < total:
        loader = train_loader(
            shards, train_p.batch_size, seed=train_p.seed, epoch=epoch, num_workers=train_p.num_workers, transform=crop
        )
        for images, labels in loader:
            if step >= total:
                break
            for g in optimizer.param_groups:
                g["lr"] = lr_at(step, total, warmup, train_p.start_lr, lr, train_p.final_lr)
            logits = head(encoder(transform(images, step)).mean(dim=1))
            loss = nn.functional.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        epoch += 1
    bar.close()
    wall = time.perf_counter() - start
    report = {"steps": total, "wall_s": round(wall, 1), "final_loss": round(loss.item(), 4)}
    return encoder.eval(), report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("overrides", nargs="?", default="{}", help="JSON {section: {key: value}}")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (warmup + cosine as in params)")
    ap.add_argument("--out", default="/tmp/tune")
    args = ap.parse_args()
    over = json.loads(args.overrides)
    tune_cpu_allocator()
    model_p: ModelParams = section("model", ModelParams, over)  # type: ignore[assignment]
    train_p: TrainParams = section("train", TrainParams, over)  # type: ignore[assignment]
    run_dir = Path(args.out) / args.name
    norm = read_normalization(Path("reports/validation.json"))
    encoder, report = train_supervised(model_p, train_p, norm, args.lr)
    encoder_path = save_encoder(encoder, run_dir / "encoder.safetensors", encoder_meta(model_p, norm))
    ev: EvalParams = section("eval", EvalParams, over)  # type: ignore[assignment]
    row = {"name": args.name, "kind": "supervised", "overrides": over, "lr": args.lr, **report}
    row.update(probe_encoder(encoder_path, ev, Path(args.out)))
    record(Path(args.out), row, f"{args.name} (supervised)", f"train {row['wall_s']} s loss {row['final_loss']}")


if __name__ == "__main__":
    main()
