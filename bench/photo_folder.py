"""A synthetic photo folder for bench/photos.py: JPEGs cut from the sample photographs scikit-learn ships.

`make_folder(root, n, classes, seed)` writes `root/class_k/img_NNNNNNN.jpg`: each image is a random
crop (area 10-100 % of the source, aspect 3/4-4/3) of one of sklearn's sample photographs (china.jpg,
flower.jpg, 640x427), resized so its long side is 256-500 px, randomly flipped, brightness/contrast/
colour jittered and saved at JPEG quality 80-95. Class k draws from photograph k % 2 with a tint of
its own, so classes differ a little. Seeded: the same arguments give the same files. Generated data
only: it lives under /tmp and is never committed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps
from sklearn.datasets import load_sample_images


def _tint(k: int) -> np.ndarray:
    return np.array([1.0 + 0.08 * np.cos(k), 1.0 + 0.08 * np.cos(k + 2.1), 1.0 + 0.08 * np.cos(k + 4.2)])


def make_folder(root: Path, n: int, classes: int = 4, seed: int = 0) -> dict[str, int]:
    """Write `n` JPEGs over `classes` classes under `root` (kept if already complete); returns counts."""
    root = Path(root)
    done = root / f".complete-{n}-{classes}-{seed}"
    if done.is_file():
        return {"images": n, "bytes": sum(p.stat().st_size for p in root.rglob("*.jpg"))}
    photos = [Image.fromarray(img) for img in load_sample_images().images]
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(n):
        k = i % classes
        src = photos[k % len(photos)]
        w, h = src.size
        area = rng.uniform(0.1, 1.0) * w * h
        aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        cw, ch = min(w, round(np.sqrt(area * aspect))), min(h, round(np.sqrt(area / aspect)))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = src.crop((x, y, x + cw, y + ch))
        long_side = int(rng.integers(256, 501))
        scale = long_side / max(cw, ch)
        img = img.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            img = ImageOps.mirror(img)
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.75, 1.25))
        img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.75, 1.25))
        arr = np.asarray(img, dtype=np.float32) * _tint(k) * rng.uniform(0.95, 1.05, 3)
        out = root / f"class_{k}" / f"img_{i:07d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(out, quality=int(rng.integers(80, 96)))
        total += out.stat().st_size
    done.write_text(f"{n} images\n")
    return {"images": n, "bytes": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("n", type=int)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(make_folder(args.root, args.n, args.classes, args.seed))


if __name__ == "__main__":
    main()
