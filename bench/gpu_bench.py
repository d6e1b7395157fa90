"""Measurements behind bench/gpu_check.sh (one sub-command each; every one prints one JSON line).

    train   ViT-B/16 at 224 px I-JEPA training step (pipeline.ijepa.train.build + train_step), bf16
            autocast: images/s, model FLOPs per image (torch's FlopCounterMode on one step) and MFU
            against the GPU's dense bf16 peak; `--compile` for torch.compile.
    ddp     the same step under `torchrun --nproc_per_node=N` (nccl, one GPU per process): global images/s.
    loader  the training loader (pipeline.data.loader.train_loader with the paper's random-resized crop
            to 224) over generated JPEG shards (photo-sized, shorter side 256), `--workers` processes.
    project a throw-away copy of this project (git + DVC) for the end-to-end `dvc repro`.
    render  the results as a BENCHMARKS.md section (markdown).

`--tiny` (train/ddp) and small `--images` (loader) run the same code in seconds on a CPU; the tests do.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# dense bf16 tensor-core peak (TFLOP/s, vendor datasheets, no sparsity); matched against the device name
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H200", 989.0), ("H100", 989.0), ("GH200", 989.0), ("A100", 312.0),
                    ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0), ("RTX 4090", 165.0)]  # fmt: skip
PROJECT_FILES = ["dvc.yaml", "params.yaml", ".gitignore", ".dvcignore", "pipeline", "stages", "flows", "configs"]


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((tf for key, tf in PEAK_BF16_TFLOPS if key.lower() in name.lower()), None)


def model_params(tiny: bool):  # noqa: ANN201 - pipeline.config.ModelParams
    from pipeline.config import ModelParams

    if tiny:
        return ModelParams(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2,
                           pred_embed_dim=16, pred_depth=1, pred_num_heads=2)  # fmt: skip
    return ModelParams(img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                       pred_embed_dim=384, pred_depth=6, pred_num_heads=12)  # fmt: skip


def train_bench(args: argparse.Namespace) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.config import MaskParams, TrainParams
    from pipeline.ijepa.distributed import init_distributed, resolve_device
    from pipeline.ijepa.train import build, train_step

    dist = init_distributed(args.device)
    device = resolve_device(args.device, dist)
    model_p = model_params(args.tiny)
    train_p = TrainParams(batch_size=args.batch, precision=args.precision, compile=args.compile, device=args.device,
                          num_workers=0, epochs=1)  # fmt: skip
    norm = {"mean": [0.5] * 3, "std": [0.25] * 3}
    tr = build(model_p, MaskParams(), train_p, norm, args.batch * dist.world * 10_000, device, dist)
    images = torch.rand(args.batch, 3, model_p.img_size, model_p.img_size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    flops = None
    if not args.compile:  # count on the eager model (the compiled one computes the same)
        with FlopCounterMode(display=False) as counter:
            train_step(tr, images, 0)
        flops = counter.get_total_flops() / args.batch
    t0 = time.perf_counter()
    for step in range(args.warmup):
        train_step(tr, images, step)
    sync()
    warm_s = time.perf_counter() - t0
    times = []
    for step in range(args.warmup, args.warmup + args.steps):
        t = time.perf_counter()
        train_step(tr, images, step)
        sync()
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    if dist.world > 1:  # the slowest rank sets the pace
        t = torch.tensor([step_s], device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        step_s = float(t.item())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    out = {"kind": "ddp" if dist.world > 1 else "train", "compile": args.compile, "device": name,
           "world": dist.world, "batch_per_process": args.batch, "step_ms": round(1000 * step_s, 2),
           "images_per_s": round(args.batch * dist.world / step_s, 1), "warmup_s": round(warm_s, 1),
           "precision": args.precision, "model": "tiny" if args.tiny else "ViT-B/16 224"}  # fmt: skip
    if flops is not None:
        peak = peak_tflops(name, args.peak_tflops)
        out["flops_per_image"] = int(flops)
        out["gflops_per_image"] = round(flops / 1e9, 2)
        out["mfu"] = round(flops * out["images_per_s"] / (peak * 1e12), 4) if peak else None
        out["peak_tflops"] = peak
    dist.close()
    return out if dist.is_main else {}


def write_jpeg_shards(out: Path, images: int, shards: int, seed: int = 0) -> None:
    """Photo-like RGB JPEGs (shorter side 256, aspect 4:3), contract sample format, in `shards` tars."""
    import numpy as np
    from PIL import Image
    from webdataset import TarWriter

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:256, 0:341] / 341.0
    per = -(-images // shards)
    for s in range(shards):
        with TarWriter(str(out / f"train-{s:06d}.tar")) as tar:
            for i in range(s * per, min(images, (s + 1) * per)):
                base = np.stack([np.sin((i % 7 + 1) * 4 * xx + k) * 60 + 120 + 50 * yy for k in range(3)], -1)
                img = np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="JPEG", quality=90)
                tar.write({"__key__": f"train-{i:07d}", "jpg": buf.getvalue(), "cls": str(i % 10).encode(),
                           "json": json.dumps({"label": i % 10}).encode()})  # fmt: skip


def loader_bench(args: argparse.Namespace) -> dict:
    from pipeline.data.loader import train_loader
    from pipeline.ijepa.augment import train_transform

    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="ijepa-gpu-check-") as tmp:
        shards = Path(tmp) / "train"
        t0 = time.perf_counter()
        write_jpeg_shards(shards, args.images, max(workers, 1) * 2)
        gen_s = time.perf_counter() - t0
        loader = train_loader(shards, args.batch, seed=0, num_workers=workers, resampled=True,
                              epoch_batches=(args.batches + 2) * max(workers, 1),
                              transform=train_transform(224, (0.3, 1.0)))  # fmt: skip
        it = iter(loader)
        for _ in range(2):  # workers started, first shards open
            next(it)
        t = time.perf_counter()
        n = sum(next(it)[0].shape[0] for _ in range(args.batches))
        seconds = time.perf_counter() - t
    return {"kind": "loader", "workers": workers, "cores": os.cpu_count(), "images": n, "batch": args.batch,
            "images_per_s": round(n / seconds, 1), "shard_gen_s": round(gen_s, 1)}  # fmt: skip


def make_project(args: argparse.Namespace) -> dict:
    """Copy the project to `args.dest` (git + DVC init) with data.root = args.data; fake Fashion-MNIST
    of the real sizes (60k + 10k) when no data is given and Debian's package is missing."""
    dest = Path(args.dest)
    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    data = Path(args.data) if args.data else Path("/usr/share/datasets/fashion-mnist")
    fake = not (data / "train-images-idx3-ubyte.gz").exists()
    if fake:
        from tests.fakes import fake_fashion_mnist

        data = fake_fashion_mnist(dest.parent / "fake-fashion-mnist", n_train=60_000, n_test=10_000)
    import yaml

    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["data"]["root"] = str(data)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "GIT_AUTHOR_NAME": "gpu-check", "GIT_AUTHOR_EMAIL": "gpu-check@ijepa.local",
           "GIT_COMMITTER_NAME": "gpu-check", "GIT_COMMITTER_EMAIL": "gpu-check@ijepa.local"}  # fmt: skip
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                [sys.executable, "-m", "dvc", "config", "core.analytics", "false"]):  # fmt: skip
        subprocess.run(cmd, cwd=dest, env=env, check=True, capture_output=True)
    return {"kind": "project", "dest": str(dest), "data": str(data), "fake_data": fake}


def _row(r: dict | None, key: str, fmt: str = "{:,.0f}") -> str:
    if not r or r.get(key) is None:
        return "n/a"
    return fmt.format(r[key])


def render(args: argparse.Namespace) -> str:
    files = sorted(Path(args.results).glob("*.json"))
    results = [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]
    by = {(r["kind"], r.get("compile", False)): r for r in results}
    eager, comp, ddp = by.get(("train", False)), by.get(("train", True)), by.get(("ddp", False))
    loader, e2e = by.get(("loader", False)), by.get(("e2e", False))
    device = next((r["device"] for r in results if "device" in r), "unknown device")
    step = next((r for r in (eager, comp, ddp) if r), {})
    model = step.get("model", "ViT-B/16 224")
    model += " (predictor 384x6)" if model.startswith("ViT-B") else ""
    lines = [f"## GPU check (bench/gpu_check.sh), {device}", "",
             f"{args.machine}. {step.get('precision', 'bf16')} autocast; {model}; I-JEPA step = masks + target "
             "forward + context forward + predictor + loss + backward + AdamW + EMA, synthetic images.", "",
             "| what | figure | notes |", "| --- | --- | --- |"]  # fmt: skip
    mfu_note = f"peak {eager.get('peak_tflops')} TFLOP/s dense bf16" if eager and eager.get("peak_tflops") else ""
    lines += [
        f"| training, eager | {_row(eager, 'images_per_s')} images/s | batch {_row(eager, 'batch_per_process')}, "
        f"{_row(eager, 'step_ms', '{:.1f}')} ms/step, {_row(eager, 'gflops_per_image', '{:.1f}')} GFLOP/image |",
        f"| MFU, eager | {_row(eager, 'mfu', '{:.1%}')} | {mfu_note} |",
        f"| training, torch.compile | {_row(comp, 'images_per_s')} images/s | {_row(comp, 'step_ms', '{:.1f}')} "
        f"ms/step; compile + warm-up {_row(comp, 'warmup_s', '{:.0f}')} s |",
        f"| MFU, torch.compile | {mfu(eager, comp)} | same FLOPs per image as eager |",
        f"| nccl DDP, {_row(ddp, 'world', '{}')} GPU(s) | {_row(ddp, 'images_per_s')} images/s | "
        f"{_row(ddp, 'batch_per_process')} per GPU; scaling vs 1 GPU eager: {scaling(eager, ddp)} |",
        f"| loader, {_row(loader, 'workers', '{}')} workers ({_row(loader, 'cores', '{}')} cores) | "
        f"{_row(loader, 'images_per_s')} images/s | JPEG 256 px → random-resized crop 224 |",
        f"| default pipeline, `dvc repro` | {_row(e2e, 'wall_s', '{:.0f}')} s | {e2e_note(e2e)} |",
    ]
    return "\n".join(lines) + "\n"


def mfu(eager: dict | None, comp: dict | None) -> str:
    if not eager or not comp or eager.get("mfu") is None:
        return "n/a"
    return f"{eager['mfu'] * comp['images_per_s'] / eager['images_per_s']:.1%}"


def scaling(eager: dict | None, ddp: dict | None) -> str:
    if not eager or not ddp:
        return "n/a"
    return f"{ddp['images_per_s'] / (eager['images_per_s'] * ddp['world']):.0%} per GPU"


def e2e_note(e2e: dict | None) -> str:
    if not e2e:
        return "not run"
    return e2e.get("note", "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("train", "ddp"):
        p = sub.add_parser(name)
        p.add_argument("--batch", type=int, default=128)
        p.add_argument("--steps", type=int, default=20)
        p.add_argument("--warmup", type=int, default=5)
        p.add_argument("--compile", action="store_true")
        p.add_argument("--device", default="cuda")
        p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
        p.add_argument("--peak-tflops", type=float, default=None)
        p.add_argument("--tiny", action="store_true", help="a tiny model (CPU smoke test)")
    p = sub.add_parser("loader")
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--workers", type=int, default=None, help="default: all cores")
    p = sub.add_parser("project")
    p.add_argument("dest")
    p.add_argument("--data", default=None)
    p = sub.add_parser("render")
    p.add_argument("results", help="directory of *.json result lines")
    p.add_argument("--machine", default="machine not described")
    args = ap.parse_args(argv)
    if args.cmd == "render":
        sys.stdout.write(render(args))
        return 0
    out = {"train": train_bench, "ddp": train_bench, "loader": loader_bench, "project": make_project}[args.cmd](args)
    if out:
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
