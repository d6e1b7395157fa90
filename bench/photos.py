"""Benchmark of the photo data path (issue 13) on generated JPEG folders (bench/photo_folder.py).

For each folder size N (`--sizes`, e.g. 5000 20000): the `shard` stage as DVC runs it (fresh process,
imagefolder, RGB, shorter side `--image-size`, `encoding: keep`) with its images/s, peak RSS (main
process, and summed over its worker processes: an upper bound, shared pages counted per process) and
shard bytes / source bytes; then the `validate` stage (s per 10k images, peak RSS). The memory ratio
between the largest and the smallest N is what must stay flat (≤ 1.2). On the largest folder: loader
images/s of our shards (decode + the paper's RandomResizedCrop(224, 0.3-1) in the workers) against
torchvision's `ImageFolder` + `RandomResizedCrop(224)` + `ToTensor` over the same files, both with
`--workers` workers and the same batch size, steady state (after the first batch); and the tar reader
(ours vs webdataset's). `--pipeline` adds a smoke of `dvc exp run` shard → register with the
configs/vit-s16-224-imagefolder-cpu.yaml preset on the largest folder (`--pipeline-size`), one epoch, gate not enforced.

    python bench/photos.py --sizes 5000 20000 [--workers 2] [--work /tmp/photos-bench] [--pipeline]

Everything is generated and written under --work (never in the repo); results go to <work>/photos.json
and are printed as markdown. Run it alone on an idle machine: timings of a loaded host mean little.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from photo_folder import make_folder  # noqa: E402

from pipeline.data.loader import train_loader  # noqa: E402
from pipeline.data.transforms import RandomResizedCrop  # noqa: E402


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1",
            "DO_NOT_TRACK": "1", "GX_ANALYTICS_ENABLED": "false"}  # fmt: skip


def measured(cmd: list[str], cwd: Path, poll_s: float = 0.05) -> dict:
    """Run `cmd`; wall time, exit code and peak RSS (MB) of the process and of its whole tree."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"main": 0, "tree": 0}
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            main = ps.memory_info().rss
            tree = main + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak["main"], peak["tree"] = max(peak["main"], main), max(peak["tree"], tree)
        except psutil.Error:
            pass
        time.sleep(poll_s)
    reader.join()
    mb = {k: round(v / 2**20, 1) for k, v in peak.items()}
    return {"rc": proc.returncode, "wall_s": round(time.perf_counter() - start, 2), "out": "".join(out)[-2000:],
            "peak_rss_mb": mb["main"], "peak_tree_rss_mb": mb["tree"]}  # fmt: skip


def stage_dir(work: Path, folder: Path, n: int, image_size: int) -> Path:
    """A scratch directory the stages run in: params.yaml (imagefolder, keep-ratio, keep) and nothing else."""
    d = work / f"stages-{n}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    params = {
        "data": {"source": "imagefolder", "root": str(folder), "image_mode": "RGB", "image_size": image_size,
                 "resize": "keep-ratio", "encoding": "keep", "shard_max_count": 5000},
        "validate": {"expected_sizes": None},
    }  # fmt: skip
    (d / "params.yaml").write_text(yaml.safe_dump(params))
    return d


def bench_stages(work: Path, n: int, image_size: int) -> tuple[dict, Path, Path]:
    folder = work / f"folder-{n}"
    src = make_folder(folder, n)
    d = stage_dir(work, folder, n, image_size)
    shard = measured([sys.executable, "-m", "stages.shard"], d)
    if shard["rc"]:
        raise RuntimeError(f"shard failed:\n{shard['out']}")
    report = json.loads((d / "reports/shard.json").read_text())
    validate = measured([sys.executable, "-m", "stages.validate"], d)
    vreport = json.loads((d / "reports/validation.json").read_text())
    vtiming = json.loads((d / "reports/timings/validation.json").read_text())
    row = {
        "images": report["count"]["total"], "source_bytes": src["bytes"], "shard_bytes": report["bytes"],
        "bytes_ratio": round(report["bytes"] / src["bytes"], 3), "kept": report["stored"]["kept"],
        "shard_wall_s": shard["wall_s"], "shard_images_per_s": round(report["count"]["total"] / shard["wall_s"], 1),
        "shard_peak_rss_mb": shard["peak_rss_mb"], "shard_peak_tree_rss_mb": shard["peak_tree_rss_mb"],
        "validate_rc": validate["rc"], "validate_success": vreport.get("success"),
        "validate_wall_s": validate["wall_s"], "validate_s_per_10k": vtiming.get("s_per_10k_images"),
        "validate_read_s": (vtiming.get("wall_s") or {}).get("read"),
        "validate_peak_rss_mb": validate["peak_rss_mb"], "validate_peak_tree_rss_mb": validate["peak_tree_rss_mb"],
    }  # fmt: skip
    return row, folder, d


def _rate(batches, limit: int) -> float:  # noqa: ANN001
    it = iter(batches)
    first = next(it)[0]
    n, start = 0, time.perf_counter()
    for images, _ in it:
        n += len(images)
        if n >= limit:
            break
    assert first.shape[-2:] == (224, 224)
    return round(n / max(time.perf_counter() - start, 1e-9), 1)


def bench_loaders(folder: Path, shards: Path, workers: int, batch: int, limit: int) -> dict:
    """Images/s of our shard loader (uint8 batches, the crop in the workers: what pretraining runs) vs
    torchvision's ImageFolder on the original JPEGs with RandomResizedCrop(224), both as users write it
    (ToTensor: float batches) and with PILToTensor (uint8 batches, like ours); same workers and batch."""
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision import transforms as T

    ours = train_loader(shards, batch, seed=0, num_workers=workers, transform=RandomResizedCrop(224, (0.3, 1.0)))
    rates = {"ours_images_per_s": _rate(ours, limit)}
    for name, to_tensor in (("imagefolder", T.ToTensor()), ("imagefolder_uint8", T.PILToTensor())):
        tf = T.Compose([T.RandomResizedCrop(224, scale=(0.3, 1.0)), to_tensor])
        folder_ds = datasets.ImageFolder(str(folder), transform=tf)
        theirs = DataLoader(folder_ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)
        rates[f"{name}_images_per_s"] = _rate(theirs, limit)
    ours_rate = rates["ours_images_per_s"]
    return {"workers": workers, "batch": batch, **rates,
            "ratio": round(ours_rate / rates["imagefolder_images_per_s"], 2),
            "ratio_uint8": round(ours_rate / rates["imagefolder_uint8_images_per_s"], 2),
            "ours_per_worker": round(ours_rate / max(workers, 1), 1)}  # fmt: skip


def bench_tar(shards: Path) -> dict:
    from webdataset.tariterators import tar_file_iterator

    from pipeline.data.tario import iter_members

    shard = sorted(shards.glob("*.tar"))[0]
    start = time.perf_counter()
    with open(shard, "rb") as fh:
        n_wds = sum(1 for _ in tar_file_iterator(fh))
    t_wds = time.perf_counter() - start
    start = time.perf_counter()
    n_ours = sum(1 for _ in iter_members(str(shard)))
    t_ours = time.perf_counter() - start
    assert n_ours == n_wds
    return {"members": n_ours, "webdataset_s": round(t_wds, 3), "ours_s": round(t_ours, 3)}


SMOKE = {  # on top of the CPU preset: a few steps, quick probes, the gate recorded instead of enforced
    "train.epochs": 1, "train.min_steps": "null", "train.checkpoint_every": 1000, "train.snapshots": 1,
    "train.log_every": 20,
    "eval.lowshot_k": "[1,5]", "eval.lowshot_seeds": 2, "eval.knn_k": "[5,20]", "eval.c_grid": "[0.1,1.0]",
    "eval.snapshot_max_images": 100, "register.enforce_gate": "false", "register.margin_metric": "lowshot.k5.mean",
}  # fmt: skip


def pipeline_smoke(work: Path, folder: Path, batch: int) -> dict:
    """`dvc exp run` of the whole pipeline in a git+DVC copy of the project with the CPU 224-px preset."""
    from pipeline.ijepa.presets import preset_overrides

    proj = work / "project"
    shutil.rmtree(proj, ignore_errors=True)
    proj.mkdir(parents=True)
    for name in ["dvc.yaml", "params.yaml", ".gitignore", ".dvcignore", "pipeline", "stages", "flows", "configs"]:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, proj / name)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                [sys.executable, "-m", "dvc", "config", "core.analytics", "false"], ["git", "add", "-A"],
                [*git, "commit", "-qm", "smoke"]):  # fmt: skip
        subprocess.run(cmd, cwd=proj, env=env(), check=True, capture_output=True)
    flags = preset_overrides(ROOT / "configs/vit-s16-224-imagefolder-cpu.yaml", ROOT / "params.yaml")
    flags += [f"data.root={folder}", f"train.batch_size={batch}"] + [f"{k}={v}" for k, v in SMOKE.items()]
    run = measured([sys.executable, "-m", "dvc", "exp", "run", *[a for f in flags for a in ("-S", f)]], proj, 0.5)
    out = {"rc": run["rc"], "wall_s": run["wall_s"], "tail": run["out"][-600:]}
    for name in ("shard", "validation", "pretrain", "eval_linear", "eval_lowshot"):
        path = proj / f"reports/{name}.json"
        if path.is_file():
            rep = json.loads(path.read_text())
            keep = ("count", "success", "steps", "wall_s", "images_per_s", "linear.test_top1", "lowshot.k5.mean")
            out[name] = {k: rep[k] for k in keep if k in rep}
    out["registered"] = (proj / "registry/entry.json").is_file()
    return out


def markdown(res: dict) -> str:
    rows = res["stages"]
    lines = [f"Host: {res['host']}; load average at start {res['load_avg']}.", "",
             "| images | source MB | shards / source | kept | shard images/s | shard peak RSS main / tree MB | "
             "validate s/10k | validate peak RSS main / tree MB |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['images']} | {r['source_bytes'] / 1e6:.1f} | {r['bytes_ratio']} | {r['kept']} | "
                     f"{r['shard_images_per_s']} | {r['shard_peak_rss_mb']} / {r['shard_peak_tree_rss_mb']} | "
                     f"{r['validate_s_per_10k']} | {r['validate_peak_rss_mb']} / "
                     f"{r['validate_peak_tree_rss_mb']} |")  # fmt: skip
    if len(rows) > 1:
        lines += ["", f"Shard peak RSS ratio {rows[-1]['images']} / {rows[0]['images']} images: main "
                  f"{res['memory_ratio']['main']}, tree {res['memory_ratio']['tree']} (flat: ≤ 1.2)."]  # fmt: skip
    lo = res["loader"]
    lines += ["", f"Loader, {lo['workers']} workers, batch {lo['batch']}, RandomResizedCrop(224, 0.3-1): our shards "
              f"{lo['ours_images_per_s']} images/s, torchvision ImageFolder on the same JPEGs "
              f"{lo['imagefolder_images_per_s']} images/s with ToTensor: **{lo['ratio']}x** (target ≥ 1.5x); "
              f"with PILToTensor (uint8 like ours) {lo['imagefolder_uint8_images_per_s']} images/s: "
              f"{lo['ratio_uint8']}x."]  # fmt: skip
    t = res["tar"]
    lines += [
        f"Tar reading, one shard ({t['members']} members): webdataset {t['webdataset_s']} s, ours {t['ours_s']} s."
    ]
    if "pipeline" in res:
        p = res["pipeline"]
        lines += ["", f"Pipeline smoke (dvc exp run, CPU 224-px preset, {p.get('images')} images, one epoch): exit "
                  f"{p['rc']} in {p['wall_s']} s; "
                  f"registered: {p['registered']}; pretrain {p.get('pretrain')}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000], help="folder sizes (images)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/photos-bench"))
    ap.add_argument("--image-size", type=int, default=256, help="stored shorter side")
    ap.add_argument("--workers", type=int, default=2, help="loader workers (both loaders)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--loader-images", type=int, default=4000, help="images timed per loader")
    ap.add_argument("--pipeline", action="store_true", help="also the dvc exp run smoke (one epoch)")
    ap.add_argument("--pipeline-size", type=int, default=None,
                    help="folder size of the smoke, one of --sizes (default: the largest)")  # fmt: skip
    args = ap.parse_args()
    sizes = sorted(args.sizes)
    size = args.pipeline_size or sizes[-1]
    if size not in sizes:
        ap.error(f"--pipeline-size {size} is not one of --sizes {sizes}")
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    res: dict = {"host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                 f"{torch.__version__}", "load_avg": [round(v, 1) for v in os.getloadavg()], "stages": []}  # fmt: skip
    dirs = []
    for n in sorted(args.sizes):
        row, folder, d = bench_stages(args.work, n, args.image_size)
        res["stages"].append(row)
        dirs.append((folder, d))
        print(json.dumps(row), flush=True)
    first, last = res["stages"][0], res["stages"][-1]
    res["memory_ratio"] = {
        "main": round(last["shard_peak_rss_mb"] / first["shard_peak_rss_mb"], 2),
        "tree": round(last["shard_peak_tree_rss_mb"] / first["shard_peak_tree_rss_mb"], 2),
    }
    folder, d = dirs[-1]
    limit = min(args.loader_images, last["images"] * 8 // 10 - 2 * args.batch)
    res["loader"] = bench_loaders(folder, d / "data/shards/train", args.workers, args.batch, limit)
    res["tar"] = bench_tar(d / "data/shards/train")
    if args.pipeline:
        res["pipeline"] = pipeline_smoke(args.work, dirs[sizes.index(size)][0], batch=32) | {"images": size}
    (args.work / "photos.json").write_text(json.dumps(res, indent=2) + "\n")
    print(markdown(res))


if __name__ == "__main__":
    main()
