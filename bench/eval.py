"""Benchmark of the evaluation stages: feature extraction speed, probe solvers, and the eval budget.

Measures on Fashion-MNIST shards (built into --work from the Debian dataset when --shards is not
given) with an encoder of the default architecture (--encoder, else a seeded random-init encoder):

1. shard decoding (eval_loader) and encoder forward throughput, fp32 vs bf16 autocast;
2. the linear-probe solver: scikit-learn LogisticRegression (lbfgs, multinomial) vs our torch
   full-batch L-BFGS, on the full 55k×D train features, every C of the grid: wall time and accuracy;
3. probe accuracy and time against the train-set cap (eval.max_train) for encoder and raw pixels;
4. the three eval stages with the default params (4 snapshots) in a scratch project: wall times.

Writes bench/eval.md (tables) and bench/eval.json. Usage: `python bench/eval.py [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import DataParams, EvalParams, ModelParams  # noqa: E402
from pipeline.data.loader import eval_loader  # noqa: E402
from pipeline.data.shards import write_shards  # noqa: E402
from pipeline.data.sources import load_source, stratified_split  # noqa: E402
from pipeline.eval.features import Extractor, FeatureSet, extract  # noqa: E402
from pipeline.eval.linear import fit_logreg, linear_probe, standardize, topk_accuracy  # noqa: E402
from pipeline.ijepa.export import encoder_meta, load_encoder, random_encoder, save_encoder  # noqa: E402

SPLITS = ("train", "val", "test")
NORM = {"mean": [0.2860], "std": [0.3530]}  # Fashion-MNIST train statistics


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    secs = time.perf_counter() - start
    print(f"[{time.strftime('%H:%M:%S')}] {getattr(fn, '__name__', fn)}: {secs:.2f} s", flush=True)
    return out, secs


def ensure_shards(work: Path, shards: Path | None) -> Path:
    if shards is not None:
        return shards
    root = work / "project/data"
    if not (root / "shards/test").is_dir():
        params = DataParams()
        write_shards(load_source(params), params, root / "shards", root / "manifest.csv")
    return root / "shards"


def ensure_encoder(work: Path, encoder: Path | None) -> Path:
    if encoder is not None:
        return encoder
    path = work / "project/models/encoder.safetensors"
    meta = encoder_meta(ModelParams(), NORM, step=1000, epoch=1)
    save_encoder(random_encoder(meta, seed=1), path, meta)
    snaps = path.parent / "snapshots"
    snaps.mkdir(exist_ok=True)
    index = []
    for i, step in enumerate((250, 500, 750, 1000)):
        name = f"encoder-step{step:07d}.safetensors"
        save_encoder(random_encoder(meta, seed=10 + i), snaps / name, {**meta, "step": step})
        index.append({"file": name, "step": step, "epoch": 0, "wall_s": 0.0})
    (snaps / "index.json").write_text(json.dumps(index))
    return path


def decode_all(shard_dir: Path, batch_size: int = 512) -> tuple[list, float]:
    batches, secs = timed(lambda: list(eval_loader(shard_dir, batch_size)))
    return batches, sum(len(b[1]) for b in batches) / secs


def throughput(model, batches, precision: str) -> tuple[FeatureSet, float]:
    n = sum(len(b[1]) for b in batches)
    out, secs = timed(extract, batches, [Extractor("e", model)], NORM["mean"], NORM["std"], precision=precision)
    return out["e"], n / secs


def sklearn_solver(train: FeatureSet, val: FeatureSet, test: FeatureSet, grid: list[float]) -> list[dict]:
    """scikit-learn LogisticRegression (lbfgs, multinomial) per C. Runs in its own process: after torch's
    OpenMP pool has been used, numpy/scikit-learn threads in the same process compete with it."""
    from sklearn.linear_model import LogisticRegression

    xtr, xva, xte = (x.double().numpy() for x in standardize(train.features, val.features, test.features))
    rows = []
    for c in grid:
        clf, secs = timed(LogisticRegression(C=c, max_iter=1000).fit, xtr, train.labels)
        rows.append({"solver": "sklearn lbfgs (max_iter 1000)", "C": c, "s": secs, "iters": int(clf.n_iter_.max()),
                     "val": clf.score(xva, val.labels), "test": clf.score(xte, test.labels)})  # fmt: skip
    return rows


def torch_solver(train: FeatureSet, val: FeatureSet, test: FeatureSet, grid: list[float]) -> list[dict]:
    """Our torch L-BFGS per C: along the warm-started path `select_c` takes, and cold-started."""
    xtr, xva, xte = standardize(train.features, val.features, test.features)
    ytr, yva, yte = (torch.from_numpy(s.labels) for s in (train, val, test))
    rows, prev = [], None
    for c in grid:
        prev, secs = timed(fit_logreg, xtr, ytr, int(ytr.max()) + 1, c, init=prev)
        val_acc, test_acc = topk_accuracy(prev.logits(xva), yva), topk_accuracy(prev.logits(xte), yte)
        rows.append({"solver": "torch L-BFGS (warm start)", "C": c, "s": secs, "iters": prev.iterations,
                     "val": val_acc, "test": test_acc})  # fmt: skip
    for c in grid:
        cold, secs = timed(fit_logreg, xtr, ytr, int(ytr.max()) + 1, c)
        val_acc, test_acc = topk_accuracy(cold.logits(xva), yva), topk_accuracy(cold.logits(xte), yte)
        rows.append({"solver": "torch L-BFGS (cold start)", "C": c, "s": secs, "iters": cold.iterations,
                     "val": val_acc, "test": test_acc})  # fmt: skip
    return rows


def cap_table(sets: dict[str, dict[str, FeatureSet]], caps: list[int | None], grid: list[float]) -> list[dict]:
    rows = []
    for name, s in sets.items():
        for cap in caps:
            train = s["train"]
            if cap is not None and cap < len(train):
                train = train.subset(stratified_split(train.labels, cap, 0)[0])
            res, secs = timed(linear_probe, train, s["val"], s["test"], grid)
            rows.append({"features": name, "train": len(train), "dim": train.dim, "test": res.test_top1,
                         "val": res.val_top1, "C": res.best_c, "s": secs})  # fmt: skip
    return rows


def stage_times(work: Path, shards: Path, encoder: Path) -> dict[str, float]:
    """Run the three stages with default eval params in a scratch project (symlinked inputs)."""
    proj = work / "stages"
    shutil.rmtree(proj, ignore_errors=True)
    (proj / "data").mkdir(parents=True)
    (proj / "data/shards").symlink_to(shards.resolve())
    (proj / "data/manifest.csv").symlink_to((shards.parent / "manifest.csv").resolve())
    (proj / "models").symlink_to(encoder.parent.resolve())
    shutil.copy(ROOT / "params.yaml", proj / "params.yaml")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = {}
    for stage in ("features", "eval_linear", "eval_lowshot"):
        proc, secs = timed(subprocess.run, [sys.executable, "-m", f"stages.{stage}"], cwd=proj, env=env,
                           capture_output=True, text=True)  # fmt: skip
        print(proc.stdout.strip(), proc.stderr[-2000:] if proc.returncode else "")
        out[stage] = secs
    out["report"] = json.loads((proj / "reports/eval_linear.json").read_text())
    out["lowshot"] = json.loads((proj / "reports/eval_lowshot.json").read_text())
    return out


def render(res: dict) -> str:
    """bench/eval.md from the measured numbers (sections whose phase has not run are left out)."""
    loads = ", ".join(f"{k[5:]} {v:.1f}" for k, v in res.items() if k.startswith("load_"))
    lines = [
        "# Evaluation benchmark (generated by bench/eval.py)",
        "",
        f"Machine: {res['machine']}. 1-min load average at the start of each phase: {loads}. The 2 cores were",
        "shared with other jobs during these runs, so absolute times are pessimistic; ratios are what count.",
        "Encoder: default architecture (ViT 128x4, patch 4 on 28x28), random weights (seed 1) standing in",
        "for a trained one; Fashion-MNIST shards 55k/5k/10k.",
        "",
    ]

    def row(name: str, key: str) -> str:
        return f"| {name} | " + " | ".join(f"{res[f'{key}_{s}_img_s']:.0f}" for s in SPLITS) + " |"

    if "decode_test_img_s" in res:
        pp = res["precision_probe"]
        lines += [
            "## Throughput (images/s)",
            "",
            "| step | train | val | test |",
            "|---|---|---|---|",
            row("decode shards (eval_loader)", "decode"),
            row("encoder forward fp32", "fp32"),
            f"| encoder forward bf16 autocast | | | {res['bf16_test_img_s']:.0f} |",
            "",
            f"bf16 vs fp32: relative feature error {pp['rel_feature_err']:.1e}; linear-probe test top-1"
            f" (10k train) fp32 {pp['fp32']:.4f}, bf16 {pp['bf16']:.4f}.",
            "",
        ]
    solvers = res.get("sklearn", []) + res.get("torch", [])
    if solvers:
        lines += [
            "## Linear-probe solver, full 55k x 128 train features (standardised)",
            "",
            "| solver | C | wall s | iterations | val top-1 | test top-1 |",
            "|---|---|---|---|---|---|",
        ]
        for r in solvers:
            lines.append(
                f"| {r['solver']} | {r['C']:g} | {r['s']:.2f} | {r['iters']} | {r['val']:.4f} | {r['test']:.4f} |"
            )
        lines.append("")
    if "caps" in res:
        lines += [
            "## Train-set cap (eval.max_train): full protocol (C grid on val), torch solver",
            "",
            "| features | dim | train | best C | val top-1 | test top-1 | wall s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in res["caps"]:
            lines.append(
                f"| {r['features']} | {r['dim']} | {r['train']} | {r['C']:g} | {r['val']:.4f} | "
                f"{r['test']:.4f} | {r['s']:.2f} |"
            )
        lines.append("")
    if "stages" in res:
        st = res["stages"]
        rep, low = st["report"], st["lowshot"]
        total = st["features"] + st["eval_linear"] + st["eval_lowshot"]
        lines += [
            "## The three eval stages, default params, 4 snapshots (wall s, incl. interpreter start)",
            "",
            "| features | eval_linear | eval_lowshot | total |",
            "|---|---|---|---|",
            f"| {st['features']:.1f} | {st['eval_linear']:.1f} | {st['eval_lowshot']:.1f} | {total:.1f} |",
            "",
            f"Reported: linear test top-1 {rep['linear.test_top1']:.4f}, raw pixels "
            f"{rep['baseline.raw.linear.test_top1']:.4f}, random init "
            f"{rep['baseline.random.linear.test_top1']:.4f}; 10-shot {low['lowshot.k10.mean']:.4f} "
            f"(raw {low['baseline.raw.lowshot.k10.mean']:.4f}).",
            "",
        ]
    return "\n".join(lines)


def phase_extract(args: argparse.Namespace, shards: Path, model, res: dict) -> None:
    data = {}
    for split in SPLITS:
        data[split], res[f"decode_{split}_img_s"] = decode_all(shards / split)
    feats = {}
    for split in SPLITS:
        feats[split], res[f"fp32_{split}_img_s"] = throughput(model, data[split], "fp32")
        feats[split].save(args.work / "feats/encoder" / f"{split}.npz")
        raw = extract(data[split], [Extractor("raw")], NORM["mean"], NORM["std"])["raw"]
        raw.save(args.work / "feats/raw_pixels" / f"{split}.npz")
    bf_test, res["bf16_test_img_s"] = throughput(model, data["test"], "bf16")
    bf_val, _ = throughput(model, data["val"], "bf16")
    sub = stratified_split(feats["train"].labels, 10000, 0)[0]
    keep = frozenset(feats["train"].keys[sub].tolist())
    batches = [b for b in data["train"] if any(k in keep for k in b[2])]
    bf_train = extract(batches, [Extractor("e", model, keep)], NORM["mean"], NORM["std"], precision="bf16")["e"]
    p32 = linear_probe(feats["train"].subset(sub), feats["val"], feats["test"], EvalParams().c_grid)
    p16 = linear_probe(bf_train, bf_val, bf_test, EvalParams().c_grid)
    err = np.linalg.norm(bf_test.features - feats["test"].features) / np.linalg.norm(feats["test"].features)
    res["precision_probe"] = {"fp32": p32.test_top1, "bf16": p16.test_top1, "rel_feature_err": float(err)}


def cached(args: argparse.Namespace, name: str) -> dict[str, FeatureSet]:
    return {s: FeatureSet.load(args.work / "feats" / name / f"{s}.npz") for s in SPLITS}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/ijepa-bench-eval"))
    ap.add_argument("--shards", type=Path, default=None)
    ap.add_argument("--encoder", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench")
    ap.add_argument("--phases", default="extract,sklearn,torch,caps,stages", help="comma-separated, to (re)run")
    args = ap.parse_args()
    if "," in args.phases:  # one process per phase (see sklearn_solver)
        for phase in args.phases.split(","):
            subprocess.run([sys.executable, __file__, *sys.argv[1:], "--phases", phase], check=True)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    shards = ensure_shards(args.work, args.shards)
    encoder_path = ensure_encoder(args.work, args.encoder)
    out_json = args.out / "eval.json"
    res: dict = json.loads(out_json.read_text()) if out_json.is_file() else {}
    res["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    grid = EvalParams().c_grid
    for phase in args.phases.split(","):
        res[f"load_{phase}"] = os.getloadavg()[0]
        print(f"== {phase} (load {os.getloadavg()[0]:.1f})", flush=True)
        if phase == "extract":
            phase_extract(args, shards, load_encoder(encoder_path), res)
        elif phase == "sklearn":
            enc = cached(args, "encoder")
            res["sklearn"] = sklearn_solver(enc["train"], enc["val"], enc["test"], grid)
        elif phase == "torch":
            enc = cached(args, "encoder")
            res["torch"] = torch_solver(enc["train"], enc["val"], enc["test"], grid)
        elif phase == "caps":
            sets = {"encoder": cached(args, "encoder"), "raw_pixels": cached(args, "raw_pixels")}
            res["caps"] = cap_table(sets, [2000, 10000, 20000, None], grid)
        elif phase == "stages":
            res["stages"] = stage_times(args.work, shards, encoder_path)
        else:
            raise SystemExit(f"unknown phase {phase}")
        out_json.write_text(json.dumps(res, indent=1, default=float))
        (args.out / "eval.md").write_text(render(res))


if __name__ == "__main__":
    main()
