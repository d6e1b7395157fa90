"""Tests of the I-JEPA networks (pipeline/ijepa/model.py) and the encoder files (export.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from pipeline.config import MaskParams, ModelParams
from pipeline.ijepa.export import (
    encoder_forward_layers,
    encoder_meta,
    load_encoder,
    random_encoder,
    read_meta,
    save_encoder,
)
from pipeline.ijepa.layers import gather_tokens
from pipeline.ijepa.masks import MultiBlockMaskCollator
from pipeline.ijepa.model import IJEPA, Predictor, VisionTransformerEncoder

TINY = ModelParams(
    img_size=16,
    patch_size=4,
    in_chans=1,
    embed_dim=32,
    depth=2,
    num_heads=2,
    pred_embed_dim=16,
    pred_depth=2,
    pred_num_heads=2,
)
NORM = {"mean": [0.5], "std": [0.25]}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _masks(params: ModelParams, batch: int, step: int = 0):
    return MultiBlockMaskCollator(params.grid, MaskParams(), seed=0).sample(batch, step)


def test_encoder_matches_timm_vision_transformer():
    enc = VisionTransformerEncoder(16, 4, 3, 32, 2, 2, 4.0)
    assert not enc.pos_embed.requires_grad and enc.pos_embed.shape == (1, 16, 32)
    vit = VisionTransformer(**enc.timm_kwargs())
    vit.load_state_dict(enc.state_dict(), strict=True)
    assert set(vit.state_dict()) == set(enc.state_dict())
    x = torch.randn(3, 3, 16, 16)
    assert torch.allclose(vit.forward_features(x), enc(x), atol=1e-6)
    assert torch.allclose(vit(x), enc(x).mean(1), atol=1e-6)  # global_pool='avg', no fc_norm


def test_encoder_keep_selects_after_position():
    enc = VisionTransformerEncoder(16, 4, 1, 32, 2, 2).eval()
    x = torch.randn(2, 1, 16, 16)
    keep = torch.tensor([[0, 5, 15], [1, 2, 3]])
    out = enc(x, keep)
    assert out.shape == (2, 3, 32)
    # reference: the same tokens (with their own positions) run through the blocks
    tokens = gather_tokens(enc.patch_embed(x) + enc.pos_embed, keep)
    assert torch.allclose(out, enc.norm(enc.blocks(tokens)), atol=1e-6)
    # positions matter: the same patches at other positions give other outputs
    tokens_wrong = gather_tokens(enc.patch_embed(x), keep) + enc.pos_embed[:, :3]
    assert not torch.allclose(out, enc.norm(enc.blocks(tokens_wrong)), atol=1e-4)


def test_predictor_shape_and_batched_equals_per_target():
    pred = Predictor(16, 32, 16, 2, 2, grid=(4, 4))
    m = _masks(TINY, 3)
    ctx = torch.randn(3, m.context.shape[1], 32)
    out = pred(ctx, m.context, m.targets)
    assert out.shape == (3, 4, m.targets.shape[2], 32)
    for t in range(4):  # one target at a time (original recipe) gives the same numbers
        single = pred(ctx, m.context, m.targets[:, t : t + 1])
        assert torch.allclose(out[:, t], single[:, 0], atol=1e-5)


def test_loss_target_definition_and_stats():
    model = IJEPA(TINY)
    x = torch.randn(4, 1, 16, 16)
    m = _masks(TINY, 4)
    loss, stats = model(x, m)
    with torch.no_grad():
        h = F.layer_norm(model.target_encoder(x), (32,))
        target = gather_tokens(h, m.targets)
        z = model.context_encoder(x, m.context, m.context_valid)
        pred = model.predictor(z, m.context, m.targets, m.context_valid)
    assert torch.allclose(loss, F.smooth_l1_loss(pred, target), atol=1e-6)
    l2, _ = model(x, m, loss="l2", stats=False)
    assert torch.allclose(l2, ((pred - target) ** 2).mean(), atol=1e-6)
    assert {"loss", "target_std", "pred_std", "target_eff_rank"} <= set(stats)
    assert 1.0 <= stats["target_eff_rank"] <= 4.0 and stats["target_std"] > 0
    with pytest.raises(ValueError, match="unknown loss"):
        model(x, m, loss="l1")


def _padded_masks(batch: int = 6):
    params = MaskParams(
        num_targets=2, target_scale=(0.1, 0.2), context_scale=(0.5, 1.0), min_context=2, context_fill="pad"
    )
    for step in range(50):
        m = MultiBlockMaskCollator(TINY.grid, params, seed=0).sample(batch, step)
        if m.context_valid is not None and not bool(m.context_valid.all()):
            return m
    raise AssertionError("no batch with padding drawn")


@pytest.mark.parametrize("fused", [True, False])
def test_padded_context_never_attends_or_is_attended(fused: bool):
    model = IJEPA(TINY).eval()
    model.use_fused_attention(fused)
    x = torch.randn(6, 1, 16, 16)
    m = _padded_masks()
    with torch.no_grad():
        pred = model.predict(x, m)
        # each image alone with only its real context patches (no padding, no mask): the same numbers
        for i, n in enumerate(m.context_lengths.tolist()):
            alone = model.predictor(
                model.context_encoder(x[i : i + 1], m.context[i : i + 1, :n]),
                m.context[i : i + 1, :n],
                m.targets[i : i + 1],
            )
            assert torch.allclose(pred[i : i + 1], alone, atol=1e-5)
        # whatever the padding slots hold (here: random patches, targets included), nothing changes
        other = m.context.clone()
        pad = ~m.context_valid
        other[pad] = torch.randint(0, 16, (int(pad.sum()),))
        swapped = type(m)(other, m.targets, m.context_raw_len, m.fallbacks, m.context_valid)
        assert torch.allclose(model.predict(x, swapped), pred, atol=1e-6)
        # and the mask is what guarantees it: ignoring it changes the predictions
        unmasked = type(m)(other, m.targets, m.context_raw_len, m.fallbacks, None)
        assert not torch.allclose(model.predict(x, unmasked), pred, atol=1e-4)


def test_fused_and_explicit_attention_agree():
    model = IJEPA(TINY)
    x = torch.randn(2, 1, 16, 16)
    m = _masks(TINY, 2)
    fused, _ = model(x, m, stats=False)
    model.use_fused_attention(False)
    assert all(not b.attn.fused_attn for b in model.predictor.predictor_blocks)
    explicit, _ = model(x, m, stats=False)
    assert torch.allclose(fused, explicit, atol=1e-6)


def test_loss_decreases_with_adamw():
    model = IJEPA(TINY)
    opt = torch.optim.AdamW(model.param_groups(0.04), lr=1e-3)
    x = torch.randn(8, 1, 16, 16)
    m = _masks(TINY, 8)
    losses = []
    for _ in range(20):
        loss, _ = model(x, m, stats=False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.ema_update(0.99)
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert all(p.grad is None for p in model.target_encoder.parameters())


def test_ema_update_moves_target_by_expected_amount():
    model = IJEPA(TINY)
    with torch.no_grad():
        for p in model.context_encoder.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    old_t = copy.deepcopy(model.target_encoder.state_dict())
    ctx = model.context_encoder.state_dict()
    model.ema_update(0.9)
    new_t = model.target_encoder.state_dict()
    for name, value in new_t.items():
        if name == "pos_embed":
            assert torch.equal(value, old_t[name])
            continue
        assert torch.allclose(value, 0.9 * old_t[name] + 0.1 * ctx[name], atol=1e-6), name
    assert not any(p.requires_grad for p in model.target_encoder.parameters())


def test_param_groups_exclude_biases_norms_and_tokens():
    model = IJEPA(TINY)
    decay, no_decay = model.param_groups(0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0 and no_decay["wd_exclude"]
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim == 2 or "patch_embed.proj.weight" in names[id(p)] for p in decay["params"])
    excluded = {names[id(p)] for p in no_decay["params"]}
    assert "predictor.mask_token" in excluded and "context_encoder.norm.weight" in excluded
    assert not any("target_encoder" in n or "pos_embed" in n for n in excluded)
    n_trainable = sum(p.requires_grad for p in model.context_encoder.parameters()) + sum(
        p.requires_grad for p in model.predictor.parameters()
    )
    assert len(decay["params"]) + len(no_decay["params"]) == n_trainable


def test_export_round_trip(tmp_path):
    model = IJEPA(TINY)
    meta = encoder_meta(TINY, NORM, step=7, epoch=1)
    path = save_encoder(model.target_encoder, tmp_path / "models" / "encoder.safetensors", meta)
    on_disk = json.loads(path.with_suffix(".json").read_text())
    assert on_disk["format"] == "ijepa-encoder/1" and on_disk["grid"] == [4, 4] and on_disk["step"] == 7
    assert sorted(p.name for p in path.parent.iterdir()) == ["encoder.json", "encoder.safetensors"]
    vit = load_encoder(path.parent)  # a directory works too
    assert isinstance(vit, VisionTransformer) and not vit.training
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(vit.forward_features(x), model.target_encoder(x), atol=1e-6)
        layers = encoder_forward_layers(vit, x, 2)
        ours = encoder_forward_layers(model.target_encoder, x, 2)
    assert len(layers) == 2 and layers[-1].shape == (2, 16, 32)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(layers, ours, strict=True))
    assert torch.allclose(layers[-1], vit.forward_features(x), atol=1e-6)
    assert read_meta(path)["normalization"] == NORM


def test_export_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_encoder(tmp_path / "missing.safetensors")
    model = IJEPA(TINY)
    path = save_encoder(model.target_encoder, tmp_path / "enc.safetensors", encoder_meta(TINY, NORM))
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["timm_kwargs"]["depth"] = 3
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="enc.safetensors"):
        load_encoder(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(FileNotFoundError, match="enc.json"):
        load_encoder(path)


def test_random_encoder_is_seeded():
    meta = encoder_meta(TINY, NORM)
    a, b, c = random_encoder(meta, 0), random_encoder(meta, 0), random_encoder(meta, 1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["blocks.0.attn.qkv.weight"], sc["blocks.0.attn.qkv.weight"])
    assert torch.equal(sa["pos_embed"], sc["pos_embed"])  # fixed sin-cos
    assert not a.training


def test_saved_encoder_bytes_do_not_depend_on_the_process(tmp_path: Path) -> None:
    """Same weights + meta -> same file bytes in every process (DVC hashes them)."""
    import hashlib
    import subprocess
    import sys

    code = (
        "import sys, torch; from pipeline.config import ModelParams; "
        "from pipeline.ijepa.model import IJEPA; from pipeline.ijepa.export import encoder_meta, save_encoder; "
        "torch.manual_seed(0); p = ModelParams(embed_dim=32, depth=1, num_heads=2, pred_embed_dim=16, pred_depth=1, "
        "pred_num_heads=2); m = IJEPA(p); "
        "save_encoder(m.target_encoder, sys.argv[1], encoder_meta(p, {'mean': [0.5], 'std': [0.25]}))"
    )
    digests = set()
    for i in range(6):  # the old two-key metadata differed between processes with probability 1/2 per pair
        out = tmp_path / f"enc{i}.safetensors"
        subprocess.run([sys.executable, "-c", code, str(out)], check=True, cwd=Path(__file__).resolve().parents[1])
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_shared_context_predictor():
    m = _padded_masks()
    ctx = torch.randn(6, m.context.shape[1], 32)
    one = {mode: Predictor(16, 32, 16, 1, 2, grid=(4, 4), mode=mode) for mode in ("per_target", "shared")}
    one["shared"].load_state_dict(one["per_target"].state_dict())
    with torch.no_grad():  # one block: both modes are the same math
        a, b = (one[k](ctx, m.context, m.targets, m.context_valid) for k in ("per_target", "shared"))
    assert torch.allclose(a, b, atol=1e-5)
    deep = Predictor(16, 32, 16, 3, 2, grid=(4, 4), mode="shared").eval()
    with torch.no_grad():
        out = deep(ctx, m.context, m.targets, m.context_valid)
        # blocks never see each other: moving target 1 leaves target 0's prediction unchanged
        moved = m.targets.clone()
        moved[:, 1] = (moved[:, 1] + 5) % 16
        again = deep(ctx, m.context, moved, m.context_valid)
        assert torch.allclose(out[:, 0], again[:, 0], atol=1e-6) and not torch.allclose(out[:, 1], again[:, 1])
        # padding is ignored here too: each image alone with its real context gives the same numbers
        for i, n in enumerate(m.context_lengths.tolist()):
            alone = deep(ctx[i : i + 1, :n], m.context[i : i + 1, :n], m.targets[i : i + 1])
            assert torch.allclose(out[i : i + 1], alone, atol=1e-5)
    with pytest.raises(ValueError, match="predictor mode"):
        Predictor(16, 32, 16, 1, 2, grid=(4, 4), mode="bogus")


def test_batch_target_norm_removes_what_every_image_shares():
    model = IJEPA(TINY)
    x = torch.randn(8, 1, 16, 16)
    m = _masks(TINY, 8)
    with torch.no_grad():
        h, layer = model.target_representations(x, m, "layer")
        _, batch = model.target_representations(x, m, "batch")
        t = F.layer_norm(h, (32,))
        expected = (t - t.mean(0)) / (t.var(0, unbiased=False) + 1e-5).sqrt()
    assert torch.allclose(batch, gather_tokens(expected, m.targets), atol=1e-5)
    assert torch.allclose(layer, gather_tokens(t, m.targets), atol=1e-6)
    # a prediction of the per-position batch mean (what positions alone can give) scores ~1 per element
    assert float((batch**2).mean()) == pytest.approx(1.0, abs=0.05)
    loss, _ = model(x, m, loss="l2", stats=False, target_norm="batch")
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="unknown target norm"):
        model.target_representations(x, m, "instance")


def test_whitened_targets_have_unit_variance_in_every_direction():
    from pipeline.ijepa.objective import batch_whiten

    model = IJEPA(TINY)
    x = torch.randn(64, 1, 16, 16)
    m = _masks(TINY, 64)
    with torch.no_grad():
        t = F.layer_norm(model.target_encoder(x), (32,))
        w = batch_whiten(t)
    assert torch.allclose(w.mean(0), torch.zeros_like(w[0]), atol=1e-5)  # nothing shared per position

    def spectrum(a: torch.Tensor) -> torch.Tensor:
        flat = (a - a.mean(0)).reshape(-1, 32).double()
        return torch.linalg.eigvalsh(flat.T @ flat / (flat.shape[0] - 1))

    raw, white = spectrum(t), spectrum(w)
    above = raw > 1e-3 * raw.mean()  # directions above the floor come out with unit variance, the rest
    assert int(above.sum()) >= 16  # (numerically empty ones) are not blown up
    assert torch.allclose(white[above], torch.ones_like(white[above]), atol=1e-3)
    assert float(white.max()) < 1.0 + 1e-3 and float(raw.max() / raw[above].min()) > 10  # raw: far from white
    _, picked = model.target_representations(x, m, "whiten")
    assert torch.allclose(picked, gather_tokens(w, m.targets), atol=1e-5)
