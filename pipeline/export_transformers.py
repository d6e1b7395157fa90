"""Export the encoder as a Hugging Face transformers `IJepaModel` directory (`ijepa export --format transformers`).

The directory holds `config.json` (an `IJepaConfig` built here, never downloaded), `model.safetensors`
and `ijepa_export.json` (where it came from, the input normalisation, and the check below), so that
`transformers.IJepaModel.from_pretrained(DIR)` loads it offline.

Mapping from our timm layout (class_token=False, global_pool="avg"): the patch projection and the
position embeddings map 1:1 (no class token on either side, so no position is dropped or shifted; a
scaled sin-cos table is just weights); timm's fused `qkv` splits into query/key/value; norm1/norm2/final
norm map to layernorm_before/layernorm_after/layernorm with `layer_norm_eps` set to our eps. The
weights are written with the names of the I-JEPA checkpoints on the Hub (`encoder.layer.N.attention.
attention.query`...), which every transformers release with IJepaModel loads (newer ones rename them on
load). IJepaModel has no pooler we use: the image feature is `last_hidden_state.mean(dim=1)`, exactly
timm's average pool after the final norm.

What IJepaModel cannot represent is refused with `ExportError` naming the part (a LayerNorm after the
patch projection, `model.patch_norm`; a class or register token; layer scale; qk-norm; ...). Before the
directory is put in place, the export is loaded back with `from_pretrained` (every weight must match)
and its features are compared with ours on a seeded input; a mismatch beyond `tolerance` is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

EXPORT_FORMAT = "ijepa-transformers-export/1"
RECORD = "ijepa_export.json"
TOLERANCE = 1e-4


class ExportError(ValueError):
    """The encoder cannot be exported faithfully, or the target directory cannot be written."""


def _is_identity(module: nn.Module | None) -> bool:
    return module is None or isinstance(module, nn.Identity)


def unsupported_parts(vit: nn.Module) -> list[str]:
    """What of this timm VisionTransformer IJepaModel cannot represent (empty: exportable)."""
    from timm.layers import Mlp
    from timm.models.vision_transformer import Block

    problems = []
    if not _is_identity(getattr(vit.patch_embed, "norm", None)):
        problems.append("a LayerNorm after the patch projection (model.patch_norm / timm_kwargs.embed_norm_layer; "
                        "IJepaModel adds positions straight to the projected patches)")  # fmt: skip
    if getattr(vit, "cls_token", None) is not None or getattr(vit, "reg_token", None) is not None:
        problems.append("a class or register token (IJepaModel has neither)")
    if getattr(vit, "global_pool", "avg") != "avg":
        problems.append(f"global_pool={vit.global_pool!r} (the export's feature is the token mean, 'avg')")
    if getattr(vit, "dynamic_img_size", False):
        problems.append("dynamic_img_size=True")
    for name in ("norm_pre", "fc_norm", "head"):
        if not _is_identity(getattr(vit, name, None)):
            problems.append(f"a {name} module ({type(getattr(vit, name)).__name__}); expected none")
    proj = vit.patch_embed.proj
    if proj.bias is None:
        problems.append("a patch projection without bias")
    norms = [vit.norm] + [n for blk in vit.blocks for n in (blk.norm1, blk.norm2)]
    if not all(isinstance(n, nn.LayerNorm) and n.elementwise_affine for n in norms):
        problems.append("norm layers other than affine nn.LayerNorm")
    elif len({n.eps for n in norms}) > 1:
        problems.append(f"LayerNorms with different eps {sorted({n.eps for n in norms})} (IJepaConfig has one)")
    for i, blk in enumerate(vit.blocks):
        where = f"block {i}"
        if type(blk) is not Block:
            problems.append(f"{where}: {type(blk).__name__} (expected timm's pre-norm Block)")
            continue
        if not (_is_identity(blk.ls1) and _is_identity(blk.ls2)):
            problems.append(f"{where}: layer scale (init_values)")
        attn = blk.attn
        if not all(_is_identity(getattr(attn, n, None)) for n in ("q_norm", "k_norm", "norm")):
            problems.append(f"{where}: qk-norm or attention output norm")
        if attn.proj.bias is None:
            problems.append(f"{where}: attention projection without bias")
        mlp = blk.mlp
        if type(mlp) is not Mlp or not _is_identity(getattr(mlp, "norm", None)):
            problems.append(f"{where}: MLP {type(mlp).__name__} (expected timm's plain Mlp)")
        elif not (isinstance(mlp.act, nn.GELU) and mlp.act.approximate == "none"):
            problems.append(f"{where}: MLP activation {mlp.act} (expected exact GELU)")
        elif mlp.fc1.bias is None or mlp.fc2.bias is None:
            problems.append(f"{where}: MLP layers without bias")
    return problems


def _pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value), int(value))


def hf_config(vit: nn.Module) -> Any:
    """The IJepaConfig of this encoder (built locally from the module's own shapes)."""
    from transformers import IJepaConfig

    blk = vit.blocks[0]
    size, patch = _pair(vit.patch_embed.img_size), _pair(vit.patch_embed.patch_size)
    return IJepaConfig(
        hidden_size=vit.embed_dim,
        num_hidden_layers=len(vit.blocks),
        num_attention_heads=blk.attn.num_heads,
        intermediate_size=blk.mlp.fc1.out_features,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=float(vit.norm.eps),
        image_size=size[0] if size[0] == size[1] else list(size),
        patch_size=patch[0] if patch[0] == patch[1] else list(patch),
        num_channels=vit.patch_embed.proj.in_channels,
        qkv_bias=blk.attn.qkv.bias is not None,
        architectures=["IJepaModel"],
    )


def hf_state_dict(vit: nn.Module) -> dict[str, torch.Tensor]:
    """Our weights under the Hub I-JEPA checkpoint names (fp32, contiguous, CPU)."""
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in vit.state_dict().items()}
    out = {
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "embeddings.position_embeddings": sd["pos_embed"],
        "layernorm.weight": sd["norm.weight"],
        "layernorm.bias": sd["norm.bias"],
    }
    width = vit.embed_dim
    for i in range(len(vit.blocks)):
        src, dst = f"blocks.{i}.", f"encoder.layer.{i}."
        for p in ("weight", "bias"):
            out[f"{dst}layernorm_before.{p}"] = sd[f"{src}norm1.{p}"]
            out[f"{dst}layernorm_after.{p}"] = sd[f"{src}norm2.{p}"]
            out[f"{dst}attention.output.dense.{p}"] = sd[f"{src}attn.proj.{p}"]
            out[f"{dst}intermediate.dense.{p}"] = sd[f"{src}mlp.fc1.{p}"]
            out[f"{dst}output.dense.{p}"] = sd[f"{src}mlp.fc2.{p}"]
            qkv = sd.get(f"{src}attn.qkv.{p}")
            if qkv is not None:  # rows: query, key, value (timm reshapes qkv to [3, heads, head_dim])
                for j, part in enumerate(("query", "key", "value")):
                    out[f"{dst}attention.attention.{part}.{p}"] = qkv[j * width : (j + 1) * width]
    return {k: v.contiguous() for k, v in out.items()}


@torch.no_grad()
def compare_features(vit: nn.Module, hf_model: nn.Module, batch: int = 2, seed: int = 0) -> dict[str, float]:
    """Max abs difference of pooled features and of last-layer tokens on a seeded N(0, 1) input."""
    size = _pair(vit.patch_embed.img_size)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, vit.patch_embed.proj.in_channels, *size, generator=gen)
    tokens = vit.forward_features(x)
    ours = vit.forward_head(tokens)
    hf_tokens = hf_model(pixel_values=x).last_hidden_state
    return {
        "pooled_max_abs_diff": float((ours - hf_tokens.mean(dim=1)).abs().max()),
        "tokens_max_abs_diff": float((tokens - hf_tokens).abs().max()),
    }


def _load_back(path: Path) -> nn.Module:
    from transformers import IJepaModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model, info = IJepaModel.from_pretrained(str(path), local_files_only=True, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise ExportError(f"{path}: IJepaModel.from_pretrained did not take every exported weight: {bad}")
    return model.eval()


def _place(staging: Path, out: Path) -> None:
    """Move the finished export onto `out`; an earlier export there is replaced, anything else kept."""
    if out.exists():
        if not out.is_dir():
            raise ExportError(f"{out}: exists and is not a directory")
        if any(out.iterdir()) and not (out / RECORD).is_file():
            raise ExportError(f"{out}: not empty and not an earlier export (no {RECORD}); refusing to overwrite")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old)
    else:
        os.replace(staging, out)


def export_transformers(vit: nn.Module, out_dir: Path | str, source: str, tolerance: float = TOLERANCE) -> dict:
    """Write the IJepaModel directory for `vit` (a timm VisionTransformer from `load_encoder`, with its
    `.ijepa_meta`); returns the record written to `ijepa_export.json`."""
    try:
        import transformers
    except ImportError as exc:
        raise ExportError(f"transformers is not installed ({exc}): pip install 'ijepa-pipeline[transformers]'") from exc
    from safetensors.torch import save_file

    problems = unsupported_parts(vit)
    if problems:
        raise ExportError(f"{source}: IJepaModel cannot represent this encoder: " + "; ".join(problems)
                          + ". Use the timm weights (models/encoder.safetensors) instead.")  # fmt: skip
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / RECORD).is_file():
        raise ExportError(f"{out}: not empty and not an earlier export (no {RECORD}); refusing to overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        vit = vit.eval()
        hf_config(vit).save_pretrained(str(staging))
        save_file(hf_state_dict(vit), str(staging / "model.safetensors"), metadata={"format": "pt"})
        check = compare_features(vit, _load_back(staging))
        if check["pooled_max_abs_diff"] > tolerance or check["tokens_max_abs_diff"] > tolerance:
            raise ExportError(f"{source}: the exported IJepaModel's features differ from ours by "
                              f"{check} (> {tolerance:g}); nothing written to {out}")  # fmt: skip
        meta = dict(getattr(vit, "ijepa_meta", {}) or {})
        record = {
            "format": EXPORT_FORMAT,
            "source": source,
            "source_format": meta.get("format"),
            "step": meta.get("step"),
            "epoch": meta.get("epoch"),
            "normalization": meta.get("normalization"),
            "timm_kwargs": meta.get("timm_kwargs"),
            "transformers_version": transformers.__version__,
            "features": "last_hidden_state.mean(dim=1) of inputs normalised as (x - mean) / std, x in [0, 1]",
            "check": {**check, "tolerance": tolerance, "input": "seeded N(0,1) batch of 2"},
        }
        (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        _place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return record
