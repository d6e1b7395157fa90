"""DVC stage `shard`: source dataset → data/shards/{train,val,test}/*.tar + data/manifest.csv.

Reads params `data`; writes reports/shard.json (counts, shard hashes, bytes, stored formats, skips,
removed duplicates) and reports/timings/shard.json (wall time, images/s).
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.config import ParamsError, load_section
from pipeline.data.shards import shard_dataset
from pipeline.data.sources import CorruptImageError, SourceError

SHARD_DIR = Path("data/shards")
MANIFEST = Path("data/manifest.csv")
REPORT = Path("reports/shard.json")


def main(params_path: str = "params.yaml") -> int:
    try:
        report = shard_dataset(load_section("data", params_path), SHARD_DIR, MANIFEST, REPORT)
    except (ParamsError, SourceError, CorruptImageError) as exc:
        print(f"shard: error: {exc}", file=sys.stderr)
        if isinstance(exc, CorruptImageError):
            print("shard: set data.on_corrupt: skip to skip (and list) unusable files", file=sys.stderr)
        return 1
    counts, stored = report["count"], report["stored"]
    print(
        f"shard: {counts['total']} images (train {counts['train']}, val {counts['val']}, "
        f"test {counts['test']}) in {report['shards']['total']} shards ({stored['png']} png, {stored['jpg']} jpg, "
        f"{stored['kept']} source files kept as they are), {report['images_per_s']:.0f} images/s, "
        f"{report['skipped_count']} skipped, {report['duplicates_count']} duplicates removed"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
