"""Per-sample transforms: the paper's random-resized crop (antialiased, seeded) and the eval centre crop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.transforms import CenterCrop, RandomResizedCrop, crop_box
from pipeline.ijepa.augment import BatchTransform, train_transform


def noise(h: int, w: int, c: int = 3, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (c, h, w), dtype=np.uint8))


@pytest.mark.parametrize(("h", "w", "size"), [(96, 130, 32), (40, 30, 64), (256, 341, 224)])
def test_a_full_image_box_equals_a_plain_antialiased_resize(h: int, w: int, size: int) -> None:
    img = noise(h, w)
    full = RandomResizedCrop(size, scale=(1.0, 1.0), ratio=(w / h, w / h))  # the only box: the whole image
    out = full(img, torch.Generator().manual_seed(0))
    pil = Image.fromarray(img.permute(1, 2, 0).numpy()).resize((size, size), Image.Resampling.BILINEAR)
    ref = torch.from_numpy(np.array(pil)).permute(2, 0, 1)
    assert out.dtype == torch.uint8 and out.shape == (3, size, size)
    assert (out.int() - ref.int()).abs().max() <= 1  # within 1/255 of PIL's antialiased bilinear resize


def test_crop_boxes_follow_scale_and_ratio_and_are_seeded() -> None:
    gen = torch.Generator().manual_seed(3)
    boxes = [crop_box(200, 300, (0.3, 1.0), gen) for _ in range(500)]
    for top, left, h, w in boxes:
        assert min(top, left) >= 0 and top + h <= 200 and left + w <= 300
        assert 0.3 * 0.98 <= h * w / 60000 <= 1.0
        assert 3 / 4 * 0.97 <= w / h <= 4 / 3 * 1.03
    areas = [h * w / 60000 for _, _, h, w in boxes]
    assert min(areas) < 0.35 and max(areas) > 0.85  # covered, up to the largest 4:3 box of a 3:2 image
    again = torch.Generator().manual_seed(3)
    assert [crop_box(200, 300, (0.3, 1.0), again) for _ in range(500)] == boxes
    other = torch.Generator().manual_seed(4)
    assert [crop_box(200, 300, (0.3, 1.0), other) for _ in range(5)] != boxes[:5]
    # an extreme aspect falls back to the central crop of the clamped ratio
    assert crop_box(10, 1000, (0.9, 1.0), torch.Generator().manual_seed(0)) == (0, 493, 10, 13)


def test_center_crop_resizes_the_shorter_side_then_cuts_the_middle() -> None:
    crop = CenterCrop(224, 0.875)
    img = noise(300, 400)
    out = crop(img)
    assert out.shape == (3, 224, 224)
    resized = torch.nn.functional.interpolate(img[None].float(), size=(256, 341), mode="bilinear", antialias=True)
    middle = resized[0, :, 16:240, 58:282].round().clamp(0, 255).to(torch.uint8)
    assert (out.int() - middle.int()).abs().max() <= 1
    model_sized = noise(224, 224)
    assert crop(model_sized) is model_sized  # untouched
    assert CenterCrop(224, 0.875)(noise(256, 300)).shape == (3, 224, 224)
    with pytest.raises(ValueError, match="crop ratio"):
        CenterCrop(224, 1.5)


def test_train_transform_and_batch_normalisation() -> None:
    assert isinstance(train_transform(32, (0.3, 1.0)), RandomResizedCrop)
    plain = train_transform(28, None)
    img = noise(28, 28, c=1)
    assert plain(img, torch.Generator()) is img  # Fashion-MNIST: no crop, no resize
    assert plain(noise(40, 60, c=1), torch.Generator()).shape == (1, 28, 28)
    norm = BatchTransform(28, [0.5], [0.25])
    x = img[None].float().div(255.0)
    assert torch.equal(norm(x, 0), (x - 0.5) / 0.25)
    assert torch.equal(norm(img[None], 0), (x - 0.5) / 0.25)  # the loader's uint8 batch: scaled here, same bits
    with pytest.raises(ValueError, match="30x30.*28x28"):
        norm(torch.zeros(2, 1, 30, 30))
    with pytest.raises(ValueError, match="channels"):
        norm(torch.zeros(2, 3, 28, 28))
    assert math.isclose(float(norm(torch.ones(1, 1, 28, 28)).mean()), 2.0)
