"""Encoder files (docs/CONTRACTS.md, "Encoder files"): `.safetensors` weights + `.json` architecture
beside it, written atomically, loadable as a plain timm VisionTransformer.

Owns `encoder_meta`, `save_encoder`, `read_meta`, `load_encoder`, `random_encoder` (the random-init
baseline, initialised like pretraining) and `encoder_forward_layers` (token outputs of the last blocks
for feature extraction).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pipeline.atomic import replacing
from pipeline.config import ModelParams
from pipeline.ijepa.model import VisionTransformerEncoder

FORMAT = "ijepa-encoder/1"
_ENCODER_ARGS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio")


def encoder_meta(
    model_params: ModelParams, normalization: Mapping[str, Any], step: int = 0, epoch: int = 0
) -> dict[str, Any]:
    """The `.json` record of an encoder: format, timm kwargs, grid, input normalisation, step, epoch."""
    p = model_params
    kwargs = {
        "img_size": p.img_size,
        "patch_size": p.patch_size,
        "in_chans": p.in_chans,
        "embed_dim": p.embed_dim,
        "depth": p.depth,
        "num_heads": p.num_heads,
        "mlp_ratio": float(p.mlp_ratio),
        "qkv_bias": True,
        "class_token": False,
        "global_pool": "avg",
        "fc_norm": False,
        "num_classes": 0,
    }
    if p.patch_norm:
        kwargs["embed_norm_layer"] = "layernorm"
    mean, std = list(normalization["mean"]), list(normalization["std"])
    if len(mean) != p.in_chans or len(std) != p.in_chans:
        raise ValueError(f"normalization has {len(mean)} means / {len(std)} stds for {p.in_chans} channels")
    extra = {"pos_embed_scale": float(p.pos_embed_scale)} if p.pos_embed_scale != 1.0 else {}
    return {
        "format": FORMAT,
        "timm_kwargs": kwargs,
        **extra,
        "grid": list(p.grid),
        "normalization": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        "step": int(step),
        "epoch": int(epoch),
    }


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    if path.is_dir():
        path = path / "encoder.safetensors"
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: expected a .safetensors file or a directory holding encoder.safetensors")
    return path, path.with_suffix(".json")


def save_encoder(encoder: nn.Module, path_safetensors: str | Path, meta: Mapping[str, Any]) -> Path:
    """Write `<name>.safetensors` and `<name>.json` atomically (tmp file + os.replace); returns the path.
    Out of space: `pipeline.atomic.NoSpaceError` naming the file; no temp file left, the old pair intact."""
    weights, meta_path = _paths(path_safetensors)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in encoder.state_dict().items()}
    text = json.dumps(dict(meta), indent=2, sort_keys=True)
    tmp_w = weights.with_name(f".{weights.name}.{os.getpid()}.tmp")
    tmp_m = meta_path.with_name(f".{meta_path.name}.{os.getpid()}.tmp")
    with replacing(weights, tmp_w, tmp_m):  # out of space: NoSpaceError naming the file, temps removed
        # one metadata key: safetensors writes the metadata map in hash order (random per process), so
        # two keys made the file bytes, and DVC's hash of them, differ between identical runs
        save_file(state, str(tmp_w), metadata={"meta": text})
        tmp_m.write_text(text + "\n")
        os.replace(tmp_w, weights)
        os.replace(tmp_m, meta_path)
    return weights


def read_meta(path: str | Path) -> dict[str, Any]:
    """The `.json` beside an encoder (path = .safetensors, its .json, or a directory)."""
    path = Path(path)
    weights, meta_path = _paths(path.with_suffix(".safetensors") if path.suffix == ".json" else path)
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: encoder metadata not found (expected beside {weights.name})")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{meta_path}: not valid JSON: {exc}") from exc
    if meta.get("format") != FORMAT or "timm_kwargs" not in meta:
        raise ValueError(f"{meta_path}: not an {FORMAT} record (format={meta.get('format')!r})")
    return meta


def load_encoder(path: str | Path) -> VisionTransformer:
    """timm VisionTransformer with the saved weights (strict), eval mode; `.ijepa_meta` holds the json."""
    weights, meta_path = _paths(path)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: encoder weights not found")
    meta = read_meta(weights)
    vit = VisionTransformer(**meta["timm_kwargs"], weight_init="skip")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{weights}: unreadable safetensors file: {exc}") from exc
    try:
        vit.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{weights}: weights do not match the architecture in {meta_path.name}: {exc}") from exc
    vit.ijepa_meta = meta
    return vit.eval()


def random_encoder(meta: Mapping[str, Any], seed: int) -> VisionTransformer:
    """The same architecture initialised as pretraining initialises it (seeded), sin-cos positions (scaled
    by the meta's `pos_embed_scale`, as in pretraining)."""
    kwargs = meta["timm_kwargs"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ours = VisionTransformerEncoder(
            **{k: kwargs[k] for k in _ENCODER_ARGS},
            patch_norm=kwargs.get("embed_norm_layer") == "layernorm",
            pos_scale=float(meta.get("pos_embed_scale", 1.0)),
        )
    vit = VisionTransformer(**kwargs, weight_init="skip")
    vit.load_state_dict(ours.state_dict(), strict=True)
    vit.ijepa_meta = dict(meta)
    return vit.eval()


def encoder_forward_layers(vit: nn.Module, x: torch.Tensor, n_last: int = 1) -> list[torch.Tensor]:
    """Token outputs [B, N, D] of the last `n_last` blocks, oldest first; the last one after the final
    norm (what `forward_features` returns). Works for timm VisionTransformer and our encoder."""
    depth = len(vit.blocks)
    if not 1 <= n_last <= depth:
        raise ValueError(f"n_last must be in [1, {depth}], got {n_last}")
    if isinstance(vit, VisionTransformer):
        outs = vit.forward_intermediates(x, indices=n_last, output_fmt="NLC", intermediates_only=True)
        outs = list(outs)
    else:
        h = vit.patch_embed(x) + vit.pos_embed
        outs = []
        for i, blk in enumerate(vit.blocks):
            h = blk(h)
            if i >= depth - n_last:
                outs.append(h)
    outs[-1] = vit.norm(outs[-1])
    return outs
