"""Frozen-feature extraction: what is pooled, from which encoder, and the cache files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import ModelParams
from pipeline.eval.features import Extractor, FeatureSet, extract, pooled_features, resolve_precision
from pipeline.ijepa.export import encoder_meta, load_encoder, random_encoder, save_encoder

TINY = ModelParams(embed_dim=32, depth=3, num_heads=2)
NORM = {"mean": [0.3], "std": [0.2]}


def _encoder_file(path: Path, seed: int) -> Path:
    meta = encoder_meta(TINY, NORM, step=seed)
    return save_encoder(random_encoder(meta, seed), path, meta)


def _batches(n: int = 24, bs: int = 10, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 28, 28, generator=g)
    labels = torch.arange(n) % 3
    keys = [f"s{i:03d}" for i in range(n)]
    return [(images[i : i + bs], labels[i : i + bs], keys[i : i + bs]) for i in range(0, n, bs)]


def test_last_layer_pool_is_the_timm_avg_pooled_output() -> None:
    vit = random_encoder(encoder_meta(TINY, NORM), seed=0)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(pooled_features(vit, x, 1), vit(x))  # global_pool=avg after final norm
        four = pooled_features(vit, x, 3)
        assert four.shape == (4, 3 * 32)
        torch.testing.assert_close(four[:, -32:], vit(x))  # last chunk = last layer
        assert not torch.allclose(four[:, :32], four[:, 32:64])
    with pytest.raises(ValueError, match="last_layers"):
        pooled_features(vit, x, 4)


def test_features_come_from_the_saved_target_encoder(tmp_path: Path) -> None:
    path_a = _encoder_file(tmp_path / "a" / "encoder.safetensors", seed=1)
    path_b = _encoder_file(tmp_path / "b" / "encoder.safetensors", seed=2)
    batches = _batches()
    enc_a = load_encoder(path_a)
    feats_a = extract(batches, [Extractor("e", enc_a)], NORM["mean"], NORM["std"])["e"]
    feats_a2 = extract(batches, [Extractor("e", load_encoder(path_a))], NORM["mean"], NORM["std"])["e"]
    feats_b = extract(batches, [Extractor("e", load_encoder(path_b))], NORM["mean"], NORM["std"])["e"]
    x = torch.cat([b[0] for b in batches])
    with torch.no_grad():
        expected = enc_a((x - 0.3) / 0.2).numpy()  # normalised with encoder.json's statistics
    np.testing.assert_allclose(feats_a.features, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(feats_a.features, feats_a2.features)
    assert np.abs(feats_a.features - feats_b.features).mean() > 1e-2
    assert feats_a.keys.tolist() == [k for b in batches for k in b[2]]
    assert feats_a.labels.tolist() == [int(y) for b in batches for y in b[1]]


def test_raw_pixels_subsets_and_several_extractors_in_one_pass() -> None:
    batches = _batches()
    vit = random_encoder(encoder_meta(TINY, NORM), seed=0)
    keep = frozenset({"s001", "s013", "s022"})
    out = extract(batches, [Extractor("raw"), Extractor("sub", vit, keep), Extractor("all", vit)], [0.5], [0.25])
    x = torch.cat([b[0] for b in batches])
    np.testing.assert_allclose(out["raw"].features, ((x - 0.5) / 0.25).flatten(1).numpy(), rtol=1e-6)
    assert out["sub"].keys.tolist() == ["s001", "s013", "s022"]
    np.testing.assert_allclose(out["sub"].features, out["all"].select_keys(keep).features, rtol=1e-5, atol=1e-6)


def test_bf16_features_are_close_to_fp32() -> None:
    batches = _batches()
    vit = random_encoder(encoder_meta(TINY, NORM), seed=0)
    f32 = extract(batches, [Extractor("e", vit)], [0.3], [0.2], precision="fp32")["e"].features
    b16 = extract(batches, [Extractor("e", vit)], [0.3], [0.2], precision="bf16")["e"].features
    assert b16.dtype == np.float32
    assert np.linalg.norm(b16 - f32) / np.linalg.norm(f32) < 0.03
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"


def test_feature_set_roundtrip_and_checks(tmp_path: Path) -> None:
    fs = FeatureSet(np.arange(6, dtype=np.float32).reshape(3, 2), [0, 1, 0], ["a", "b", "c"])
    fs.save(tmp_path / "x" / "train.npz")
    back = FeatureSet.load(tmp_path / "x" / "train.npz")
    np.testing.assert_array_equal(back.features, fs.features)
    assert back.keys.tolist() == ["a", "b", "c"] and back.labels.dtype == np.int64
    assert back.select_keys(["c", "a"]).keys.tolist() == ["a", "c"]
    with pytest.raises(KeyError):
        back.select_keys(["zz"])
    with pytest.raises(ValueError, match="disagree"):
        FeatureSet(np.zeros((3, 2)), [0, 1], ["a", "b", "c"])


def test_raw_pixels_of_large_images_are_area_averaged_to_a_tiny_image() -> None:
    from pipeline.eval.features import raw_pixels

    x = torch.rand(2, 3, 224, 224)
    tiny = raw_pixels(x, 32)
    assert tiny.shape == (2, 3 * 32 * 32)  # not 150,528 dims per image
    block = x[0, 1, 7:14, 21:28].mean()  # output pixel (1, 3) of channel 1 = the mean of its 7x7 block
    assert torch.allclose(tiny.view(2, 3, 32, 32)[0, 1, 1, 3], block, atol=1e-6)
    small = torch.rand(2, 1, 28, 28)
    assert torch.equal(raw_pixels(small, 32), small.flatten(1))  # Fashion-MNIST: as stored
    assert torch.equal(raw_pixels(x, None), x.flatten(1))
