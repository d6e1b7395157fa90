"""Pretraining-defaults screen: one full pretrain + the linear and 10-shot probes, for a set of overrides.

Usage (from the repo root, after `dvc repro validate` has written data/shards and reports/validation.json):

    python bench/tune_pretrain.py NAME '{"train": {"lr": 5e-4}, "mask": {"min_context": 16}}'

Each run pretrains from params.yaml plus the overrides into `<out>/NAME` (not models/), extracts the
same cached feature sets as the `features` stage (eval params from params.yaml), runs the linear probe
and the k=10 low-shot protocol on the encoder and on the random-init baseline, prints one summary line
and appends it as JSON to `<out>/results.jsonl`. Results are recorded by hand in bench/tuning.md.
Run one at a time: two runs on 2 cores measure the scheduler, not the config.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pipeline.config import EvalParams, MaskParams, ModelParams, TrainParams, load_section
from pipeline.eval.features import build_cache, load_features, snapshot_set
from pipeline.eval.linear import linear_probe
from pipeline.eval.lowshot import lowshot_eval
from pipeline.ijepa.train import RunPaths, pretrain


def section(name: str, cls: type, overrides: dict) -> object:
    base = load_section(name, "params.yaml", cls).model_dump()
    return cls(**{**base, **overrides.get(name, {})})


def probe_encoder(encoder: Path, features_dir: Path, ev: EvalParams, snapshots_dir: Path | None = None) -> dict:
    """The `features` extraction plus the stages' linear and 10-shot probes, encoder vs random init
    (and the linear probe of each snapshot, when `snapshots_dir` holds an index)."""
    build_cache(
        encoder,
        "data/shards",
        features_dir,
        manifest="data/manifest.csv",
        snapshots_dir=snapshots_dir,
        last_layers=ev.last_layers,
        max_train=ev.max_train,
        snapshot_max_images=ev.snapshot_max_images,
        subset_seed=ev.subset_seed,
        precision=ev.precision,
    )
    row: dict = {}
    for set_name in ("encoder", "random_init"):
        s = load_features(features_dir, set_name)
        probe = linear_probe(s["train"], s["val"], s["test"], ev.c_grid, patience=ev.c_patience)
        low = lowshot_eval(
            s["train"], s["val"], s["test"], [10], ev.lowshot_seeds, ev.c_grid, percent=None, patience=ev.c_patience
        )
        row[set_name] = {
            "val": round(probe.val_top1, 4),
            "test": round(probe.test_top1, 4),
            "best_c": probe.best_c,
            "k10": round(low["k10"].mean, 4),
        }
    snap_index = snapshots_dir / "index.json" if snapshots_dir is not None else None
    snaps = json.loads(snap_index.read_text()) if snap_index is not None and snap_index.is_file() else []
    for snap in snaps:
        s = load_features(features_dir, snapshot_set(int(snap["step"])))
        probe = linear_probe(s["train"], s["val"], s["test"], ev.c_grid, patience=ev.c_patience)
        row.setdefault("snapshots", {})[int(snap["step"])] = round(probe.test_top1, 4)
    return row


def record(out_dir: Path, row: dict, label: str, extra: str = "") -> None:
    """Append `row` to `<out_dir>/results.jsonl` and print its summary line (encoder vs random init)."""
    with open(out_dir / "results.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
    e, r = row["encoder"], row["random_init"]
    print(
        f"{label}: linear {e['test']:.4f} (random {r['test']:.4f}, {100 * (e['test'] - r['test']):+.1f}) "
        f"10-shot {e['k10']:.4f} (random {r['k10']:.4f}, {100 * (e['k10'] - r['k10']):+.1f}) {extra}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("overrides", nargs="?", default="{}", help="JSON {section: {key: value}}")
    ap.add_argument("--out", default="/tmp/tune")
    args = ap.parse_args()
    over = json.loads(args.overrides)
    run_dir = Path(args.out) / args.name
    paths = RunPaths(
        Path("data/shards/train"),
        Path("reports/validation.json"),
        run_dir / "encoder.safetensors",
        run_dir / "snapshots",
        run_dir / "checkpoints",
        run_dir / "pretrain.json",
        run_dir / "dvclive",
    )
    start = time.perf_counter()
    report = pretrain(
        section("model", ModelParams, over),
        section("mask", MaskParams, over),
        section("train", TrainParams, over),
        paths,
        tune_allocator=True,
    )  # type: ignore[arg-type]
    assert report is not None
    row: dict = {
        "name": args.name,
        "overrides": over,
        "pretrain_s": round(report["wall_s"], 1),
        "final_loss": round(report["final_loss"], 5),
        "images_per_s": round(report["images_per_s"], 1),
    }
    ev: EvalParams = section("eval", EvalParams, over)  # type: ignore[assignment]
    row.update(probe_encoder(paths.encoder, run_dir / "features", ev, paths.snapshots))
    row["total_s"] = round(time.perf_counter() - start, 1)
    record(Path(args.out), row, args.name, f"loss {row['final_loss']} snaps {row.get('snapshots')} {row['total_s']} s")


if __name__ == "__main__":
    main()
