"""Representation-quality screen: one full pretraining run + the eval protocols, for a set of overrides.

Usage (from the repo root, after `dvc repro validate` has written data/shards and reports/validation.json):

    python bench/tune_pretrain.py NAME '{"train": {"lr": 5e-4}, "mask": {"min_context": 16}}'

Each run pretrains from params.yaml plus the overrides into `<out>/NAME` (not models/), extracts the
encoder's features exactly as the `features` stage does (fp32 on CPU, `eval.max_train` stratified train
images, all val and test), and measures what decides whether it learned anything:

- collapse: effective rank (RankMe) and common-component share of the pooled train features;
- kNN k=10/20 on centred features; the honest 10-shot protocol (C by CV inside the 10 labels per class,
  5 seeds); the linear probe (C on val, test reported); the stages' functions, not copies.

The random-init and raw-pixel baselines are computed once per data/eval setting and architecture, cached in
`<out>/baselines-<digest>.json`. One summary line is printed and appended as JSON to
`<out>/results.jsonl`. Run one at a time: two runs on 2 cores measure the scheduler, not the config.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

from pipeline.collapse import collapse_stats
from pipeline.config import EvalParams, MaskParams, ModelParams, TrainParams, load_section
from pipeline.data.shards import read_manifest
from pipeline.eval.features import SPLITS, Extractor, FeatureSet, extract, split_batches, subset_keys
from pipeline.eval.knn import knn_accuracy
from pipeline.eval.linear import linear_probe
from pipeline.eval.lowshot import lowshot_eval
from pipeline.ijepa.export import load_encoder, random_encoder, read_meta
from pipeline.ijepa.train import RunPaths, pretrain

SHARDS, MANIFEST = Path("data/shards"), Path("data/manifest.csv")


def section(name: str, cls: type, overrides: dict) -> object:
    base = load_section(name, "params.yaml", cls).model_dump()
    return cls(**{**base, **overrides.get(name, {})})


def split_subsets(ev: EvalParams) -> list[tuple[str, frozenset[str] | None]]:
    """(split, kept keys) of the `features` stage: eval.max_train stratified train images (seed
    eval.subset_seed), all of val and test (None = keep all)."""
    rows = read_manifest(MANIFEST)
    out = []
    for split in SPLITS:
        split_rows = [r for r in rows if r["split"] == split]
        keys, labels = [r["key"] for r in split_rows], [int(r["label"]) for r in split_rows]
        out.append((split, subset_keys(keys, labels, ev.max_train, ev.subset_seed) if split == "train" else None))
    return out


def feature_sets(encoder: Path, ev: EvalParams, with_baselines: bool) -> dict[str, dict[str, FeatureSet]]:
    """{set: {split: FeatureSet}} for the encoder (and the random-init / raw-pixel baselines), on the
    `features` stage's subset of keys (eval.max_train stratified train images, seed eval.subset_seed)."""
    model = load_encoder(encoder)
    meta = model.ijepa_meta
    extractors = [Extractor("encoder", model)]
    if with_baselines:
        extractors += [Extractor("random_init", random_encoder(meta, ev.random_init_seed)), Extractor("raw_pixels")]
    out: dict[str, dict[str, FeatureSet]] = {}
    for split, keep in split_subsets(ev):
        exs = [Extractor(e.name, e.model, keep) for e in extractors]
        norm = meta["normalization"]
        got = extract(split_batches(SHARDS / split, ev.batch_size, keep), exs, norm["mean"], norm["std"],
                      last_layers=ev.last_layers, precision=ev.precision, desc=split)  # fmt: skip
        for name, fs in got.items():
            out.setdefault(name, {})[split] = fs
    return out


def quality(splits: dict[str, FeatureSet], ev: EvalParams) -> dict:
    """Collapse measures, centred kNN, honest 10-shot and the linear probe of one feature set."""
    row = collapse_stats(splits["train"].features)
    knn = knn_accuracy(splits["train"], splits["test"], [10, 20], temperature=ev.knn_temperature)
    probe = linear_probe(splits["train"], splits["val"], splits["test"], ev.c_grid, patience=ev.c_patience)
    low = lowshot_eval(splits["train"], splits["val"], splits["test"], [10], ev.lowshot_seeds, ev.c_grid,
                       patience=ev.c_patience, cv_folds=ev.lowshot_cv_folds)  # fmt: skip
    row.update(
        knn10=round(knn[10], 4),
        knn20=round(knn[20], 4),
        k10=round(low["k10"].mean, 4),
        linear=round(probe.test_top1, 4),
        linear_val=round(probe.val_top1, 4),
        best_c=probe.best_c,
    )
    return row


def probe_encoder(encoder: Path, ev: EvalParams, out_dir: Path) -> dict:
    """{"encoder": quality row, "random_init": …, "raw_pixels": …} (baselines cached in out_dir, keyed by
    the data, the eval params and the encoder's architecture: the random init is of that architecture)."""
    arch = json.dumps(read_meta(encoder)["timm_kwargs"], sort_keys=True)
    digest = hashlib.sha256(MANIFEST.read_bytes() + ev.model_dump_json().encode() + arch.encode()).hexdigest()[:12]
    cache = out_dir / f"baselines-{digest}.json"
    baselines = json.loads(cache.read_text()) if cache.is_file() else None
    sets = feature_sets(encoder, ev, with_baselines=baselines is None)
    if baselines is None:
        baselines = {name: quality(sets[name], ev) for name in ("random_init", "raw_pixels")}
        cache.write_text(json.dumps(baselines, indent=1))
    return {"encoder": quality(sets["encoder"], ev), **baselines}


def record(out_dir: Path, row: dict, label: str, extra: str = "") -> None:
    """Append `row` to `<out_dir>/results.jsonl` and print its summary line (encoder vs baselines)."""
    with open(out_dir / "results.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
    e, r, p = row["encoder"], row["random_init"], row["raw_pixels"]
    print(
        f"{label}: rank {e['effective_rank']:.2f} common {e['common_share']:.2f} | "
        f"kNN10 {100 * e['knn10']:.1f} (random {100 * r['knn10']:.1f}, raw {100 * p['knn10']:.1f}) | "
        f"10-shot {100 * e['k10']:.1f} (random {100 * r['k10']:.1f}, raw {100 * p['k10']:.1f}) | "
        f"linear {100 * e['linear']:.1f} (random {100 * r['linear']:.1f}, raw {100 * p['linear']:.1f}) {extra}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("overrides", nargs="?", default="{}", help="JSON {section: {key: value}}")
    ap.add_argument("--out", default="/tmp/tune")
    ap.add_argument("--encoder", type=Path, help="probe this encoder instead of pretraining one")
    args = ap.parse_args()
    over = json.loads(args.overrides)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.encoder is not None:
        ev_only: EvalParams = section("eval", EvalParams, over)  # type: ignore[assignment]
        record(out_dir, {"name": args.name, "encoder_file": str(args.encoder),
                         **probe_encoder(args.encoder, ev_only, out_dir)}, args.name)  # fmt: skip
        return
    run_dir = out_dir / args.name
    paths = RunPaths(
        SHARDS / "train",
        Path("reports/validation.json"),
        run_dir / "encoder.safetensors",
        run_dir / "snapshots",
        run_dir / "checkpoints",
        run_dir / "pretrain.json",
        run_dir / "dvclive",
    )
    start = time.perf_counter()
    train_p = section("train", TrainParams, over)
    train_p = TrainParams(**{**train_p.model_dump(), "snapshots": 0})  # type: ignore[attr-defined]
    report = pretrain(
        section("model", ModelParams, over),  # type: ignore[arg-type]
        section("mask", MaskParams, over),  # type: ignore[arg-type]
        train_p,
        paths,
        tune_allocator=True,
    )
    assert report is not None
    row: dict = {
        "name": args.name,
        "overrides": over,
        "pretrain_s": round(report["wall_s"], 1),
        "steps": report["steps"],
        "final_loss": round(report["final_loss"], 5),
        "images_per_s": round(report["images_per_s"], 1),
    }
    ev: EvalParams = section("eval", EvalParams, over)  # type: ignore[assignment]
    row.update(probe_encoder(paths.encoder, ev, out_dir))
    row["total_s"] = round(time.perf_counter() - start, 1)
    extra = f"| loss {row['final_loss']} {row['steps']} steps {row['pretrain_s']} s (total {row['total_s']} s)"
    record(out_dir, row, args.name, extra)


if __name__ == "__main__":
    main()
