"""I-JEPA networks (DESIGN.md §4): the ViT encoder, the narrow predictor and the `IJEPA` wrapper that
computes the loss, the EMA update of the target encoder and the optimiser parameter groups.

Built from timm parts (PatchEmbed, vision_transformer.Block with fused scaled_dot_product_attention),
so the encoder's state dict loads with `strict=True` into
`timm.models.VisionTransformer(**encoder.timm_kwargs())`. Position embeddings are fixed 2-D sin-cos.
Building blocks: pipeline/ijepa/layers.py; the loss, target normalisations and VICReg terms:
pipeline/ijepa/objective.py.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm, PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from pipeline.collapse import effective_rank
from pipeline.config import ModelParams
from pipeline.ijepa.distributed import gather_rows
from pipeline.ijepa.layers import (
    INIT_STD,
    block_stack,
    gather_tokens,
    init_weights,
    key_padding_mask,
    rescale_blocks,
    run_blocks,
    sincos_pos_embed,
)
from pipeline.ijepa.masks import Masks
from pipeline.ijepa.objective import batch_standardize, batch_whiten, jepa_loss, masked_mean, variance_covariance


class VisionTransformerEncoder(nn.Module):
    """ViT without class token; state dict == timm VisionTransformer(class_token=False, global_pool='avg',
    fc_norm=False, num_classes=0[, embed_norm_layer='layernorm' with `patch_norm`]). `pos_scale` scales the
    fixed sin-cos position embedding (stored as the `pos_embed` tensor, so timm loads it as is).
    `forward(x, keep, keep_valid)` encodes only the kept patches (pos added
    first); `keep_valid` [B, Nk] marks padding in `keep` that attention must ignore."""

    def __init__(
        self,
        img_size: int,
        patch_size: int,
        in_chans: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        patch_norm: bool = False,
        pos_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self._kwargs = dict(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=float(mlp_ratio),
        )
        if patch_norm:  # timm: VisionTransformer(embed_norm_layer="layernorm")
            self._kwargs["embed_norm_layer"] = "layernorm"
        norm = LayerNorm if patch_norm else None
        self.patch_embed = PatchEmbed(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, norm_layer=norm
        )
        self.grid = tuple(self.patch_embed.grid_size)
        self.num_patches = self.patch_embed.num_patches
        self.pos_embed = nn.Parameter(pos_scale * sincos_pos_embed(embed_dim, self.grid), requires_grad=False)
        self.blocks = block_stack(embed_dim, depth, num_heads, mlp_ratio)
        self.norm = LayerNorm(embed_dim)
        init_weights(self)
        rescale_blocks(self.blocks)

    @classmethod
    def from_params(cls, p: ModelParams) -> VisionTransformerEncoder:
        return cls(p.img_size, p.patch_size, p.in_chans, p.embed_dim, p.depth, p.num_heads, p.mlp_ratio,
                   patch_norm=p.patch_norm, pos_scale=p.pos_embed_scale)  # fmt: skip

    def timm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the timm VisionTransformer that this state dict loads into."""
        return {
            **self._kwargs,
            "qkv_bias": True,
            "class_token": False,
            "global_pool": "avg",
            "fc_norm": False,
            "num_classes": 0,
        }

    def forward(
        self, x: torch.Tensor, keep: torch.Tensor | None = None, keep_valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        if keep is not None:
            x = gather_tokens(x, keep)
        return self.norm(run_blocks(self.blocks, x, key_padding_mask(keep_valid)))


class Predictor(nn.Module):
    """Narrow ViT predicting target-patch representations from context tokens.

    All T targets of an image run in one batched pass. `mode="per_target"` (the original's math): B*T
    sequences of [context ; Nt mask tokens], every token attending to every other, so the context
    tokens of each sequence also see that target's mask tokens. `mode="shared"`: B sequences of
    [context ; T*Nt mask tokens] under an attention mask: context tokens attend to the context only,
    the mask tokens of block t to the context and to block t, so blocks never see each other; the
    context is computed once instead of T times (about T x fewer context tokens in the predictor).
    The two agree exactly for a one-block predictor and differ beyond it (the context no longer
    conditions on the targets). The last block computes attention queries, projection and MLP only
    for the target tokens (the context outputs of the last block are never used), which is the same
    math with less work. Padded context tokens (`ctx_valid` False) are masked out of every attention.
    """

    def __init__(
        self,
        num_patches: int,
        embed_dim: int,
        pred_embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        grid: tuple[int, int] | None = None,
        mode: str = "per_target",
    ) -> None:
        super().__init__()
        if mode not in ("per_target", "shared"):
            raise ValueError(f"predictor mode must be 'per_target' or 'shared', got {mode!r}")
        self.mode = mode
        side = int(round(math.sqrt(num_patches)))
        grid = grid or (side, side)
        if grid[0] * grid[1] != num_patches:
            raise ValueError(f"grid {grid} does not hold {num_patches} patches")
        self.predictor_embed = nn.Linear(embed_dim, pred_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, pred_embed_dim))
        self.predictor_pos_embed = nn.Parameter(sincos_pos_embed(pred_embed_dim, grid), requires_grad=False)
        self.predictor_blocks = block_stack(pred_embed_dim, depth, num_heads, mlp_ratio)
        self.predictor_norm = LayerNorm(pred_embed_dim)
        self.predictor_proj = nn.Linear(pred_embed_dim, embed_dim)
        init_weights(self)
        trunc_normal_(self.mask_token, std=INIT_STD)
        rescale_blocks(self.predictor_blocks)

    def forward(
        self,
        ctx_tokens: torch.Tensor,
        ctx_idx: torch.Tensor,
        tgt_idx: torch.Tensor,
        ctx_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, nc, _ = ctx_tokens.shape
        _, t, nt = tgt_idx.shape
        pos = self.predictor_pos_embed.expand(b, -1, -1)
        x = self.predictor_embed(ctx_tokens) + gather_tokens(pos, ctx_idx)  # [B, Nc, Dp]
        dp = x.shape[-1]
        q = self.mask_token + gather_tokens(pos, tgt_idx)  # [B, T, Nt, Dp]
        if self.mode == "shared":
            x = torch.cat([x, q.reshape(b, t * nt, dp)], dim=1)
            mask = shared_context_mask(nc, t, nt, ctx_valid, x.device)
        else:
            x = x.unsqueeze(1).expand(b, t, nc, dp).reshape(b * t, nc, dp)
            x = torch.cat([x, q.reshape(b * t, nt, dp)], dim=1)
            mask = None
            if ctx_valid is not None:
                valid = torch.cat([ctx_valid, ctx_valid.new_ones(b, nt)], dim=1)  # queries are always real
                mask = key_padding_mask(valid.repeat_interleave(t, dim=0))
        x = run_blocks(self.predictor_blocks[:-1], x, mask)
        x = _last_block_tail(self.predictor_blocks[-1], x, nc, mask)
        x = self.predictor_proj(self.predictor_norm(x))
        return x.reshape(b, t, nt, -1)


def shared_context_mask(nc: int, t: int, nt: int, ctx_valid: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Boolean attention mask [B or 1, 1, L, L], L = nc + t*nt, of the shared-context predictor: every
    token may attend to the (real) context; a mask token also to the tokens of its own block."""
    n = nc + t * nt
    block = torch.arange(n, device=device)
    block = torch.where(block < nc, -1, (block - nc) // nt)  # -1: context, else target block id
    allowed = (block[None, :] == -1) | (block[:, None] == block[None, :]) & (block[:, None] >= 0)
    allowed = allowed[None, None]  # [1, 1, L, L]
    if ctx_valid is not None:
        keys = torch.cat([ctx_valid, ctx_valid.new_ones(ctx_valid.shape[0], t * nt)], dim=1)
        allowed = allowed & keys[:, None, None, :]
    return allowed


def _last_block_tail(blk: Block, x: torch.Tensor, start: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Output of timm `blk(x, attn_mask=mask)[:, start:]` computing queries, projection and MLP only for
    those tokens (`mask`: boolean, True = may be attended to)."""
    attn = blk.attn
    plain = all(isinstance(m, nn.Identity) for m in (attn.q_norm, attn.k_norm, attn.norm, blk.ls1))
    if not plain or getattr(attn, "gate", None) is not None:
        return blk(x, attn_mask=mask)[:, start:]  # a block variant this shortcut does not cover
    if mask is not None and mask.shape[-2] > 1:
        mask = mask[..., start:, :]  # the query rows that are computed
    b, n, _ = x.shape
    heads, hd = attn.num_heads, attn.head_dim
    a = heads * hd
    h = blk.norm1(x)
    w, bias = attn.qkv.weight, attn.qkv.bias
    q = F.linear(h[:, start:], w[:a], None if bias is None else bias[:a])
    kv = F.linear(h, w[a:], None if bias is None else bias[a:])
    q = q.reshape(b, n - start, heads, hd).transpose(1, 2)
    k, v = kv.reshape(b, n, 2, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
    if attn.fused_attn:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        scores = (q * attn.scale) @ k.transpose(-2, -1)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        o = scores.softmax(dim=-1) @ v
    o = attn.proj(o.transpose(1, 2).reshape(b, n - start, a))
    y = x[:, start:] + blk.drop_path1(o)
    return y + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(y))))


class IJEPA(nn.Module):
    """Context encoder + EMA target encoder + predictor; `forward` returns (loss, stats)."""

    def __init__(self, model_params: ModelParams) -> None:
        super().__init__()
        p = model_params
        self.params = p
        self.context_encoder = VisionTransformerEncoder.from_params(p)
        self.target_encoder = copy.deepcopy(self.context_encoder)
        self.target_encoder.requires_grad_(False)
        self.predictor = Predictor(
            self.context_encoder.num_patches,
            p.embed_dim,
            p.pred_embed_dim,
            p.pred_depth,
            p.pred_num_heads,
            p.mlp_ratio,
            grid=self.context_encoder.grid,
            mode=p.predictor_mode,
        )
        self._ema_pairs: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    @torch.no_grad()
    def target_representations(
        self, images: torch.Tensor, masks: Masks, norm: str = "layer"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Target encoder on the whole image -> (its output [B, N, D], normalised target patches
        [B, T, Nt, D]). `norm="layer"`: per-token layer norm (the original). `"batch"`: then each
        (position, dimension) standardised across the batch (`batch_standardize`). `"whiten"`: then
        centred per position across the batch and whitened over all tokens (`batch_whiten`)."""
        h = self.target_encoder(images)
        t = F.layer_norm(h, (h.shape[-1],))
        if norm == "batch":
            t = batch_standardize(t)
        elif norm == "whiten":
            t = batch_whiten(t)
        elif norm != "layer":
            raise ValueError(f"unknown target norm {norm!r}: expected 'layer', 'batch' or 'whiten'")
        return h, gather_tokens(t, masks.targets)

    def encode_context(self, images: torch.Tensor, masks: Masks) -> torch.Tensor:
        """Context encoder on the context patches -> [B, Nc, D] (padding rows included)."""
        return self.context_encoder(images, keep=masks.context, keep_valid=masks.context_valid)

    def predict(self, images: torch.Tensor, masks: Masks, z: torch.Tensor | None = None) -> torch.Tensor:
        """Context encoder on the context patches (or its output `z`), then the predictor -> [B, T, Nt, D]."""
        z = self.encode_context(images, masks) if z is None else z
        return self.predictor(z, masks.context, masks.targets, masks.context_valid)

    def forward(
        self,
        images: torch.Tensor,
        masks: Masks,
        loss: str = "smooth_l1",
        stats: bool = True,
        var_weight: float = 0.0,
        cov_weight: float = 0.0,
        target_norm: str = "layer",
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss averaged over all target patches and blocks, plus (when its weights are > 0) the
        variance/covariance regulariser of the pooled context features (`variance_covariance`), over the
        global batch: gathered from every rank, so a DDP run equals one process with the same global batch.
        `stats=False` skips the monitors."""
        h, target = self.target_representations(images, masks, target_norm)
        z = self.encode_context(images, masks)
        pred = self.predict(images, masks, z)
        value = jepa_loss(pred, target, loss)
        reg: dict[str, torch.Tensor] = {}
        if var_weight > 0 or cov_weight > 0:
            var, cov = variance_covariance(gather_rows(masked_mean(z, masks.context_valid)))  # global batch
            value = value + var_weight * var + cov_weight * cov
            reg = {"reg_var": var.detach(), "reg_cov": cov.detach()}
        out: dict[str, float] = {}
        if stats:
            with torch.no_grad():
                pooled = h.mean(1)  # per-image representation the probes use
                out = {
                    "loss": float(value.detach()),
                    "target_std": float(pooled.std(0).mean()) if pooled.shape[0] > 1 else 0.0,
                    "pred_std": float(pred.detach().std(0).mean()) if pred.shape[0] > 1 else 0.0,
                    "target_eff_rank": effective_rank(pooled.float()),
                    "context_len": float(masks.context_lengths.float().mean()),
                    "target_len": float(masks.targets.shape[2]),
                    **{k: float(v) for k, v in reg.items()},
                }
        return value, out

    def use_fused_attention(self, enabled: bool) -> None:
        """Switch every block between F.scaled_dot_product_attention (GPU: use it) and timm's explicit
        softmax(q k^T) v (same formula; on CPU faster for these small heads, ~10 % per step for the
        default model, mostly in backward)."""
        for module in self.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = enabled

    @torch.no_grad()
    def ema_update(self, momentum: float) -> None:
        """target <- m * target + (1 - m) * context, for every trainable parameter (fused foreach ops)."""
        if self._ema_pairs is None:
            ctx = dict(self.context_encoder.named_parameters())
            names = [n for n, p in ctx.items() if p.requires_grad]
            tgt = dict(self.target_encoder.named_parameters())
            self._ema_pairs = ([tgt[n] for n in names], [ctx[n] for n in names])
        tgt_list, ctx_list = self._ema_pairs
        torch._foreach_mul_(tgt_list, momentum)
        torch._foreach_add_(tgt_list, ctx_list, alpha=1.0 - momentum)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> IJEPA:  # .to()/.cuda() replace tensors
        self._ema_pairs = None
        return super()._apply(fn, *args, **kwargs)

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups over context encoder + predictor: weight decay on matrices only (not on biases,
        norms, 1-D params, the mask token or positions). `wd_exclude` marks the group a weight-decay
        schedule must leave at 0."""
        decay, no_decay = [], []
        for module in (self.context_encoder, self.predictor):
            for name, p in module.named_parameters():
                if not p.requires_grad:
                    continue
                if (
                    p.ndim < 2
                    or name.endswith(".bias")
                    or "norm" in name
                    or "mask_token" in name
                    or "pos_embed" in name
                ):
                    no_decay.append(p)
                else:
                    decay.append(p)
        return [
            {"params": decay, "weight_decay": weight_decay, "wd_exclude": False, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "wd_exclude": True, "name": "no_decay"},
        ]
