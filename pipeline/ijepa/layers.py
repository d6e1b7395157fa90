"""ViT building blocks shared by the encoder and the predictor (pipeline/ijepa/model.py): fixed 2-D sin-cos
position embeddings, weight init and depth rescaling, timm `Block` stacks run with an optional key-padding
mask, token gathering by index; and the CPU allocator tuning the training loop calls once."""

from __future__ import annotations

import ctypes
import ctypes.util
import math

import torch
from timm.layers import LayerNorm, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

INIT_STD = 0.02


def tune_cpu_allocator() -> bool:
    """Keep freed activation memory inside the process (glibc `mallopt`), so the multi-MB activations
    of every step reuse warm pages instead of being unmapped and page-faulted back in (about 20 % faster
    CPU training steps here; same math). Process-wide; call once at the start of CPU training.
    Returns False (and changes nothing) where glibc is not available."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def sincos_pos_embed(embed_dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sin-cos embeddings [1, H*W, D], row-major; first half encodes the column, second the
    row (the MAE / I-JEPA layout)."""
    if embed_dim % 4:
        raise ValueError(f"sin-cos position embedding needs embed_dim divisible by 4, got {embed_dim}")
    h, w = grid
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim // 4))

    def one_d(pos: torch.Tensor) -> torch.Tensor:
        out = pos.flatten()[:, None] * omega[None, :]
        return torch.cat([out.sin(), out.cos()], dim=1)

    rows, cols = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    return torch.cat([one_d(cols), one_d(rows)], dim=1).float().unsqueeze(0)


def init_weights(module: nn.Module) -> None:
    """I-JEPA init: trunc-normal(0.02) linear/conv weights, zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            trunc_normal_(m.weight, std=INIT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def rescale_blocks(blocks: nn.Sequential) -> None:
    """Divide each block's residual-output weights by sqrt(2 * layer_id) (original I-JEPA / timm fix_init)."""
    with torch.no_grad():
        for layer_id, blk in enumerate(blocks, start=1):
            blk.attn.proj.weight.div_(math.sqrt(2.0 * layer_id))
            blk.mlp.fc2.weight.div_(math.sqrt(2.0 * layer_id))


def block_stack(dim: int, depth: int, num_heads: int, mlp_ratio: float) -> nn.Sequential:
    return nn.Sequential(*[Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=LayerNorm) for _ in range(depth)])


def key_padding_mask(valid: torch.Tensor | None) -> torch.Tensor | None:
    """Boolean attention mask [B, 1, 1, N] (True = may be attended to) from a [B, N] validity mask, in
    the form timm blocks and scaled_dot_product_attention take in any dtype. None stays None."""
    return None if valid is None else valid[:, None, None, :]


def run_blocks(blocks: nn.Sequential, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """timm blocks in order, with an optional boolean attention mask."""
    if mask is None:
        return blocks(x)
    for blk in blocks:
        x = blk(x, attn_mask=mask)
    return x


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, N, D], idx [B, ...] -> [B, ..., D] (tokens picked per image)."""
    b, d = x.shape[0], x.shape[-1]
    flat = idx.reshape(b, -1)
    out = torch.gather(x, 1, flat.unsqueeze(-1).expand(-1, -1, d))
    return out.reshape(*idx.shape, d)
