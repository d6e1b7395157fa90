"""Which layer, and which encoder, should the probes read? A probe-only screen on a trained run.

Usage (repo root, after `dvc repro features`, which leaves models/encoder.safetensors, models/checkpoints
and data/shards):

    python bench/probe_layers.py [--encoder models/encoder.safetensors] [--checkpoint CKPT]

For the trained **target** encoder (what `features` exports), the **context** encoder of the same run
(from the newest full checkpoint: it is trained by gradient, the target is its EMA) and the random-init
baseline, it pools the patch tokens of every block separately (each block's output through the final
LayerNorm, as `pipeline.eval.features.pooled_features` does for `last_layers > 1`; one block = the
embedding width, so every row has the same dimension as the default features), plus the last block
without the final LayerNorm. Each feature set gets the `bench/tune_pretrain.py` quality row (effective
rank, common share, centred kNN, honest 10-shot, linear with C on val) on the `features` stage's subset
(eval.max_train stratified train images, all val and test). Rows are printed and appended as JSON to
`--out`. One pass over the shards; nothing is written into the pipeline's outputs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer
from tune_pretrain import SHARDS, quality, split_subsets

from pipeline.config import EvalParams, load_section
from pipeline.eval.features import SPLITS, FeatureSet, split_batches
from pipeline.ijepa.checkpoint import list_checkpoints, load_checkpoint
from pipeline.ijepa.export import load_encoder, random_encoder


def context_encoder(checkpoint: Path, meta: dict) -> VisionTransformer:
    """The run's context encoder (state-dict prefix `context_encoder.`) as a timm VisionTransformer."""
    state = load_checkpoint(checkpoint)["model"]
    prefix = "context_encoder."
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise ValueError(f"{checkpoint}: no {prefix}* weights in its model state")
    vit = VisionTransformer(**meta["timm_kwargs"], weight_init="skip")
    vit.load_state_dict(sub, strict=True)
    return vit.eval()


def layer_pools(model: VisionTransformer, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"L{i}": block i's tokens through the final norm, mean-pooled; "L{depth}-nonorm": without the norm}."""
    depth = len(model.blocks)
    tokens = model.forward_intermediates(x, indices=depth, norm=False, output_fmt="NLC", intermediates_only=True)
    out = {f"L{i + 1}": model.norm(t).mean(dim=1) for i, t in enumerate(tokens)}
    out[f"L{depth}-nonorm"] = tokens[-1].mean(dim=1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", type=Path, default=Path("models/encoder.safetensors"))
    ap.add_argument("--checkpoint", type=Path, help="full checkpoint of the same run (default: newest)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/tune/probe_layers.jsonl"))
    args = ap.parse_args()
    ev = load_section("eval", "params.yaml", EvalParams)
    target = load_encoder(args.encoder)
    meta = target.ijepa_meta
    ckpt = args.checkpoint or list_checkpoints(Path("models/checkpoints"))[-1]
    models = {
        "target": target,
        "context": context_encoder(ckpt, meta),
        "random_init": random_encoder(meta, ev.random_init_seed),
    }
    mean = torch.tensor(meta["normalization"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(meta["normalization"]["std"]).view(1, -1, 1, 1)
    parts: dict[str, dict[str, list[np.ndarray]]] = {}
    labels: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    sample_keys: dict[str, list[str]] = {s: [] for s in SPLITS}
    for split, keep in split_subsets(ev):
        with torch.inference_mode():
            for images, y, batch_keys in split_batches(SHARDS / split, ev.batch_size, keep):
                x = (images.float() - mean) / std
                labels[split].append(np.asarray(y, dtype=np.int64))
                sample_keys[split] += list(batch_keys)
                for name, model in models.items():
                    for layer, f in layer_pools(model, x).items():
                        parts.setdefault(f"{name}/{layer}", {s: [] for s in SPLITS})[split].append(f.numpy())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for set_name, by_split in parts.items():
        sets = {
            s: FeatureSet(np.concatenate(by_split[s]), np.concatenate(labels[s]), np.array(sample_keys[s]))
            for s in SPLITS
        }
        row = {"set": set_name, "encoder_file": str(args.encoder), "checkpoint": str(ckpt), **quality(sets, ev)}
        with open(args.out, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(
            f"{set_name:22s} rank {row['effective_rank']:6.2f} common {row['common_share']:.2f} | "
            f"kNN10 {100 * row['knn10']:.1f} | 10-shot {100 * row['k10']:.1f} | "
            f"linear {100 * row['linear']:.1f} (val {100 * row['linear_val']:.1f}, C {row['best_c']:g})",
            flush=True,
        )


if __name__ == "__main__":
    main()
