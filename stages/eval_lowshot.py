"""DVC stage `eval_lowshot`: k-shot and percent-of-labels linear probes of the encoder and baselines.

Reads params `eval` (c_grid, lowshot_k, lowshot_seeds, lowshot_percent) and data/features/; writes
reports/eval_lowshot.json (flat keys: pipeline/eval/report.py) and reports/plots/lowshot.csv, atomically.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.config import ParamsError, load_section
from pipeline.data.shards import write_json_atomic
from pipeline.eval.report import LOWSHOT_COLUMNS, lowshot_report, write_csv_atomic

FEATURES = Path("data/features")
REPORT = Path("reports/eval_lowshot.json")
PLOT = Path("reports/plots/lowshot.csv")


def main(params_path: str = "params.yaml") -> int:
    try:
        report, rows = lowshot_report(FEATURES, load_section("eval", params_path))
    except (ParamsError, FileNotFoundError, ValueError) as exc:
        print(f"eval_lowshot: error: {exc}", file=sys.stderr)
        return 1
    write_json_atomic(REPORT, report)
    write_csv_atomic(PLOT, rows, LOWSHOT_COLUMNS)
    summary = ", ".join(f"k={r['k']}: {r['encoder']:.4f}" for r in rows)
    print(f"eval_lowshot: encoder {summary} (mean test top-1); {report['wall_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
