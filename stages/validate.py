"""DVC stage `validate`: data/shards + data/manifest.csv → reports/validation.json + reports/data_docs/.

Reads params `validate`; runs the great-expectations gate (pipeline/data/validation.py). The report
(success, counts, per-check observed/expected/severity, train normalization) is written even when
validation fails, its wall times to reports/timings/validation.json. The Data Docs are rebuilt on every
run and are not a DVC output (GX stamps them with the render time and random element ids). A failed
`error` check exits 1 with a summary on stderr, which stops `dvc repro` before `pretrain` (it depends
on reports/validation.json).
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.config import ParamsError, load_section
from pipeline.data.validation import run_validation, summary_lines

SHARD_DIR = Path("data/shards")
MANIFEST = Path("data/manifest.csv")
REPORT = Path("reports/validation.json")
DOCS = Path("reports/data_docs")


def main(params_path: str = "params.yaml") -> int:
    try:
        params = load_section("validate", params_path)
    except ParamsError as exc:
        print(f"validate: error: {exc}", file=sys.stderr)
        return 1
    code, report = run_validation(SHARD_DIR, MANIFEST, params, REPORT, DOCS)
    lines = summary_lines(report)
    print("\n".join(lines), file=sys.stderr if code or len(lines) > 1 else sys.stdout)
    if code == 0:
        norm = report.get("normalization") or {}
        print(f"validate: train normalization mean {norm.get('mean')} std {norm.get('std')}; "
              f"{report['wall_s']['total']:.1f} s; report: {REPORT}, data docs: {DOCS / 'index.html'}")  # fmt: skip
    return code


if __name__ == "__main__":
    sys.exit(main())
