"""DVC stage `features`: frozen features of the target encoder, its snapshots and the baselines.

Reads params `eval` (last_layers, batch_size, precision, device, max_train, snapshot_max_images,
subset_seed, random_init_seed, crop_ratio, raw_pixels_size), models/encoder.{safetensors,json}, models/snapshots/,
data/shards and data/manifest.csv; writes data/features/ (layout: pipeline/eval/features.py), swapped in atomically,
reports/features.json (what was extracted) and reports/timings/features.json (wall time, encoder
images/s), so a re-extraction with the same inputs leaves data/features and the report byte-identical.
Input gate first (pipeline/data/integrity.py): refuses shards whose validation failed
(reports/validation.json) or whose sha256 differs from reports/shard.json, naming the shard.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.atomic import NoSpaceError, write_json_atomic
from pipeline.config import ParamsError, load_section
from pipeline.data.integrity import require_validation_passed, verify_shards
from pipeline.eval.features import build_cache
from pipeline.timings import timings_path, write_timings

ENCODER = Path("models/encoder.safetensors")
SNAPSHOTS = Path("models/snapshots")
SHARDS = Path("data/shards")
MANIFEST = Path("data/manifest.csv")
OUT = Path("data/features")
REPORT = Path("reports/features.json")
VALIDATION, SHARD_REPORT = Path("reports/validation.json"), Path("reports/shard.json")


def main(params_path: str = "params.yaml") -> int:
    try:
        p = load_section("eval", params_path)
        require_validation_passed(VALIDATION)
        for split in ("train", "val", "test"):
            verify_shards(SHARDS / split, SHARD_REPORT)
        index, timing = build_cache(
            ENCODER, SHARDS, OUT, manifest=MANIFEST, snapshots_dir=SNAPSHOTS, last_layers=p.last_layers,
            batch_size=p.batch_size, random_init_seed=p.random_init_seed, max_train=p.max_train,
            snapshot_max_images=p.snapshot_max_images, subset_seed=p.subset_seed, precision=p.precision,
            device=p.device, crop_ratio=p.crop_ratio, raw_pixels_size=p.raw_pixels_size,
        )  # fmt: skip
    except (ParamsError, NoSpaceError, FileNotFoundError, ValueError) as exc:
        print(f"features: error: {exc}", file=sys.stderr)
        return 1
    counts = index["sets"]["encoder"]["count"]
    write_json_atomic(
        REPORT,
        {
            "sets": len(index["sets"]),
            "snapshots": len(index["snapshots"]),
            "precision": index["precision"],
            "train_size": counts["train"],
            "encoder_images": timing["encoder_images"],
        },
    )
    write_timings(timings_path(REPORT), {k: v for k, v in timing.items() if k != "encoder_images"})
    print(
        f"features: {len(index['sets'])} sets (encoder dim {index['sets']['encoder']['dim']}, "
        f"{len(index['snapshots'])} snapshots; train {counts['train']}, val {counts['val']}, test {counts['test']}) "
        f"in {timing['wall_s']:.1f} s, {timing['encoder_images_per_s']:.0f} encoder images/s, {index['precision']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
