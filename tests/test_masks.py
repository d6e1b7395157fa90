"""Tests of the multi-block mask collator (pipeline/ijepa/masks.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.config import MaskParams
from pipeline.ijepa.masks import MultiBlockMaskCollator, mask_stats


def _collator(grid=(8, 8), seed=0, **kw) -> MultiBlockMaskCollator:
    return MultiBlockMaskCollator(grid, MaskParams(**kw), seed)


def _block_extent(idx: np.ndarray, width: int) -> tuple[int, int, int, int]:
    rows, cols = idx // width, idx % width
    return rows.min(), rows.max(), cols.min(), cols.max()


def test_shapes_sorted_and_equal_lengths_when_trimmed():
    c = _collator((8, 8), context_fill="trim")
    m = c.sample(16, step=3)
    b, t, nt = m.targets.shape
    assert (b, t) == (16, 4)
    assert m.context.shape[0] == 16 and m.context.dtype == torch.long
    assert m.context.shape[1] >= 4 and m.context_valid is None
    assert torch.all(m.context[:, 1:] > m.context[:, :-1])  # sorted, unique
    assert int(m.context_raw_len.min()) == m.context.shape[1]


def test_padding_keeps_every_context_patch_and_marks_the_pad():
    c = _collator((7, 7), min_context=16, context_fill="pad")
    m = c.sample(64, step=3)
    assert m.context_valid is not None and m.context_valid.shape == m.context.shape
    lengths = m.context_lengths
    assert torch.equal(lengths, m.context_raw_len)  # nothing trimmed
    assert m.context.shape[1] == int(lengths.max())
    assert len(set(lengths.tolist())) > 3  # lengths really differ per image
    assert int(lengths.min()) >= 16 and float(lengths.float().mean()) > 20  # min_context is only a floor
    for row, valid, n in zip(m.context, m.context_valid, lengths, strict=True):
        real = row[: int(n)]
        assert bool(valid[: int(n)].all()) and not bool(valid[int(n) :].any())  # real first, then pad
        assert torch.all(real[1:] > real[:-1])
        assert torch.all(row[int(n) :] == real[0])  # pad repeats a context patch, never a target one


def test_targets_are_kept_when_the_context_is_redrawn():
    # the targets of (seed, step) do not depend on how often the context had to be redrawn
    loose = _collator((7, 7), min_context=1).sample(32, step=5)
    strict = _collator((7, 7), min_context=30).sample(32, step=5)
    assert torch.equal(loose.targets, strict.targets)
    assert not torch.equal(loose.context_raw_len, strict.context_raw_len)
    assert int(strict.context_raw_len.min()) >= 20  # redraws and fallbacks reached the larger floor or close


@pytest.mark.parametrize("compat", [False, True])
def test_context_block_covers_the_whole_grid_only_outside_compat(compat):
    h = w = 7
    c = _collator((h, w), num_targets=1, target_scale=(0.02, 0.02), context_scale=(1.0, 1.0), official_compat=compat)
    m = c.sample(16, step=0)
    n_target = m.targets.shape[-1]
    expected = h * w - n_target if not compat else (h - 1) * (w - 1)  # compat caps blocks at H-1 x W-1
    assert int(m.context_raw_len.max()) <= expected
    assert (int(m.context_raw_len.max()) == expected) is (not compat)


def test_targets_are_full_rectangles_within_ranges():
    h = w = 16
    c = _collator((h, w))
    scales, aspects = [], []
    for step in range(200):
        m = c.sample(2, step)
        for blk in m.targets.reshape(-1, m.targets.shape[-1]).numpy():
            r0, r1, c0, c1 = _block_extent(blk, w)
            bh, bw = r1 - r0 + 1, c1 - c0 + 1
            assert bh * bw == len(blk) == len(set(blk.tolist()))  # a full rectangle
        scales.append(len(blk) / (h * w))
        aspects.append(bh / bw)
    scales, aspects = np.array(scales), np.array(aspects)
    # rounding h, w to integers moves the realised values a little outside the drawn ranges
    assert scales.min() >= 0.12 and scales.max() <= 0.23
    assert aspects.min() >= 0.6 and aspects.max() <= 1.8
    assert scales.std() > 0.005 and aspects.std() > 0.05  # really drawn, not constant


def test_scale_and_aspect_independent_only_outside_compat():
    """Compat draws scale and aspect from one uniform: a larger block is always a taller one."""

    def size_corr(compat: bool) -> float:
        c = _collator((64, 64), official_compat=compat)
        sizes = np.array([c._block_size(c._rng(s), (0.15, 0.2), (0.75, 1.5)) for s in range(400)])
        area, aspect = sizes[:, 0] * sizes[:, 1], sizes[:, 0] / sizes[:, 1]
        return float(np.corrcoef(area, aspect)[0, 1])

    assert size_corr(True) > 0.9
    assert abs(size_corr(False)) < 0.25


def test_no_context_patch_inside_any_target():
    c = _collator((14, 14))
    for step in range(20):
        m = c.sample(8, step)
        assert m.fallbacks == 0
        for ctx, tgts in zip(m.context, m.targets, strict=True):
            assert not set(ctx.tolist()) & set(tgts.flatten().tolist())


@pytest.mark.parametrize("compat", [False, True])
def test_blocks_reach_last_row_and_column_only_outside_compat(compat):
    h = w = 8
    c = _collator((h, w), official_compat=compat)
    last_row = last_col = False
    for step in range(100):
        t = c.sample(8, step).targets
        last_row |= bool(((t // w) == h - 1).any())
        last_col |= bool(((t % w) == w - 1).any())
    assert last_row is (not compat) and last_col is (not compat)


def test_deterministic_in_seed_and_step():
    a = _collator(seed=1).sample(8, 5)
    b = _collator(seed=1).sample(8, 5)
    assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)
    c = _collator(seed=1).sample(8, 6)
    d = _collator(seed=2).sample(8, 5)
    for other in (c, d):
        assert not (other.targets.shape == a.targets.shape and torch.equal(other.targets, a.targets))


def test_trimming_not_biased_toward_dropping_high_indices():
    """Compat keeps the lowest indices: the bottom-right is always dropped. Ours is unbiased."""

    def kept_fraction_bottom_half(compat: bool) -> float:
        c = _collator((8, 8), official_compat=compat, context_fill="trim")
        kept_bottom, avail_bottom = 0, 0
        for step in range(60):
            m = c.sample(16, step)
            tgt = m.targets.reshape(16, -1)
            raw = m.context_raw_len
            for i in range(16):
                if raw[i] <= m.context.shape[1]:
                    continue  # nothing trimmed in this image
                kept_bottom += int((m.context[i] >= 32).sum())
                avail_bottom += 1
                assert not set(m.context[i].tolist()) & set(tgt[i].tolist())
        return kept_bottom / max(avail_bottom, 1) / m.context.shape[1]

    ours, compat = kept_fraction_bottom_half(False), kept_fraction_bottom_half(True)
    assert compat < 0.3  # compat keeps mostly the top half
    assert 0.35 < ours < 0.65  # ours: about half of the kept patches from the bottom half
    assert ours - compat > 0.2


@pytest.mark.parametrize("grid", [(2, 2), (4, 4), (7, 7), (3, 5), (16, 16)])
def test_small_and_large_grids_terminate(grid):
    c = _collator(grid)
    for step in range(5):
        m = c.sample(32, step)
        n = grid[0] * grid[1]
        assert m.context.shape[1] >= min(4, n)
        assert int(m.context.max()) < n and int(m.targets.max()) < n
        assert m.targets.shape[:2] == (32, 4)


def test_collate_fn_and_stats():
    data = [(torch.rand(1, 16, 16), i % 3) for i in range(12)]
    c = _collator((4, 4))
    loader = DataLoader(data, batch_size=4, collate_fn=c)
    batches = list(loader)
    images, labels, masks = batches[0]
    assert images.shape == (4, 1, 16, 16) and labels.tolist() == [0, 1, 2, 0]
    assert torch.equal(batches[1][2].targets, c.sample(4, 1).targets)  # internal step counter
    stats = mask_stats(masks, (4, 4))
    assert stats["mask/context_len"] == float(masks.context_lengths.float().mean())
    assert stats["mask/context_padded_len"] == masks.context.shape[1]
    assert 0 < stats["mask/target_union_frac"] <= 1
    c.set_step(10)
    assert torch.equal(c([data[0], data[1]])[2].targets, c.sample(2, 10).targets)
