"""Collapse measures (pipeline/collapse.py) and the training monitor that uses them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.collapse import collapse_stats, common_share, effective_rank, rankme
from pipeline.config import MaskParams, ModelParams
from pipeline.ijepa.masks import MultiBlockMaskCollator
from pipeline.ijepa.model import IJEPA


def test_effective_rank_of_constructed_features() -> None:
    rng = np.random.default_rng(0)
    rank1 = rng.normal(size=(2000, 1)) @ rng.normal(size=(1, 64)) + 5.0  # one direction + a shared offset
    assert effective_rank(rank1) == pytest.approx(1.0, abs=0.05)
    iso = rng.normal(size=(20000, 64))
    assert effective_rank(iso) > 0.97 * 64
    # k equal directions -> k; the offset every row shares does not count (features are centred)
    k4 = np.repeat(np.eye(4), 500, axis=0) @ np.linalg.qr(rng.normal(size=(32, 4)))[0].T * 3 + 100.0
    assert effective_rank(k4) == pytest.approx(3.0, abs=1e-6)  # 4 centred one-hot means span 3 directions
    assert effective_rank(np.ones((10, 8))) == 0.0 and effective_rank(np.ones((1, 8))) == 0.0
    for f in (rank1, iso, k4):  # RankMe counts the same extremes, and is never below the variance version
        assert rankme(f) >= effective_rank(f) - 1e-9
    assert rankme(rank1) == pytest.approx(1.0, abs=0.05) and rankme(iso) > 0.97 * 64
    # one dominant direction with many small ones: the variance spectrum calls it ~1, RankMe much more
    skewed = np.concatenate([rng.normal(size=(4000, 1)) * 30, rng.normal(size=(4000, 31))], 1)
    assert effective_rank(skewed) < 1.5 and rankme(skewed) > 5
    with pytest.raises(ValueError, match="2-D"):
        effective_rank(np.ones(8))


def test_common_share_and_dead_dimensions() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5000, 16))
    assert common_share(x) < 0.01
    assert common_share(x + 10.0) == pytest.approx(100 * 16 / (100 * 16 + 16), abs=0.01)
    assert common_share(np.tile([1.0, 2.0], (5, 1))) == 1.0
    x[:, :4] = 3.0  # four dimensions never vary
    stats = collapse_stats(x)
    assert stats["dead_dim_fraction"] == 0.25 and stats["dim_std_min"] == 0.0
    assert stats["effective_rank"] > 11


def test_training_monitor_equals_the_offline_computation() -> None:
    params = ModelParams(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, pred_embed_dim=16,
                         pred_depth=1, pred_num_heads=2)  # fmt: skip
    torch.manual_seed(0)
    model = IJEPA(params)
    x = torch.randn(24, 1, 16, 16)
    masks = MultiBlockMaskCollator(params.grid, MaskParams(), seed=0).sample(24, 0)
    _, stats = model(x, masks)
    with torch.no_grad():
        pooled = model.target_encoder(x).mean(1)  # the per-image features the probes use
    assert stats["target_eff_rank"] == pytest.approx(effective_rank(pooled), rel=1e-6)
    assert stats["target_eff_rank"] != pytest.approx(effective_rank(model.target_encoder(x).flatten(0, 1)), rel=1e-3)


def test_collapse_warning_waits_for_the_warmup(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    from pipeline.ijepa.logging import RunLogger

    log = RunLogger(tmp_path / "live", total_steps=100, start_step=0)
    log.warn_low_rank(20, 1.2, 2.0, after=30)  # in the warm-up: a random-init encoder's rank, no warning
    log.warn_low_rank(40, 2.5, 2.0, after=30)  # healthy
    assert "warning" not in capsys.readouterr().err
    log.warn_low_rank(40, 1.2, 2.0, after=30)
    log.warn_low_rank(50, 1.2, None, after=30)  # warning switched off
    log.close()
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "step 40" in err and "1.20 (< train.collapse_warn_rank 2" in err
