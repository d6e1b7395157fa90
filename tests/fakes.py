"""Small generated datasets for tests: fake Fashion-MNIST idx files and image folders.

Images are class-dependent patterns plus seeded noise, so classes are learnable and no two images
are identical (the validation gate rejects duplicates).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def class_images(labels: np.ndarray, size: int = 28, seed: int = 0) -> np.ndarray:
    """uint8 [N, size, size] images: a class-specific bar pattern + noise, all distinct."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.empty((n, size, size), dtype=np.uint8)
    for i, c in enumerate(labels):
        angle = np.pi * int(c) / 10.0
        wave = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * (0.5 + 0.05 * int(c)))
        img = 110 + 70 * wave + rng.normal(0, 25, (size, size))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0))


def fake_fashion_mnist(root: Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> Path:
    """Write the four idx gz files of a Fashion-MNIST look-alike (10 balanced classes)."""
    root.mkdir(parents=True, exist_ok=True)
    for split, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        labels = np.arange(n) % 10
        np.random.default_rng(s).shuffle(labels)
        write_idx(root / f"{split}-images-idx3-ubyte.gz", class_images(labels, seed=s))
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


def fake_imagefolder(root: Path, classes: int = 3, per_class: int = 12, seed: int = 0) -> Path:
    """Class sub-directories of PNG/JPEG images of mixed sizes and modes (L, RGB, RGBA, P)."""
    rng = np.random.default_rng(seed)
    modes = ["L", "RGB", "RGBA", "P"]
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = int(rng.integers(20, 48)), int(rng.integers(20, 48))
            base = class_images(np.array([c]), size=max(h, w), seed=seed * 1000 + c * 100 + i)[0][:h, :w]
            img = Image.fromarray(base).convert(modes[i % 4] if modes[i % 4] != "P" else "RGB")
            if modes[i % 4] == "P":
                img = img.convert("P", palette=Image.Palette.ADAPTIVE)
            suffix = ".jpg" if i % 5 == 4 and img.mode in ("L", "RGB") else ".png"
            img.save(d / f"img_{i:03d}{suffix}")
    return root


def fake_photos(
    root: Path,
    classes: int = 2,
    per_class: int = 10,
    seed: int = 0,
    sizes: tuple[int, int] = (40, 96),
    suffix: str = ".jpg",
    noise: float = 20.0,
) -> Path:
    """Class sub-directories of RGB 'photos' of mixed sizes (smooth class colours + seeded noise), all
    distinct, saved as JPEG (quality 90) or PNG (`suffix`)."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(sizes[0], sizes[1], 2))
            yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
            base = np.stack([np.sin((c + 1) * 3 * xx + k) * 60 + 120 + 40 * yy for k in range(3)], axis=-1)
            img = np.clip(base + rng.normal(0, noise, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"img_{i:04d}{suffix}", **({"quality": 90} if suffix == ".jpg" else {}))
    return root
