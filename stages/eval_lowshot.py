"""DVC stage `eval_lowshot`: k-shot and percent-of-labels linear probes of the encoder and baselines.

Reads params `eval` (c_grid, c_patience, lowshot_k, lowshot_seeds, lowshot_percent) and data/features/;
writes reports/eval_lowshot.json (flat keys: pipeline/eval/report.py) and reports/plots/lowshot.csv,
atomically.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.eval.report import LOWSHOT_COLUMNS, lowshot_report, run_report_stage

FEATURES = Path("data/features")
REPORT = Path("reports/eval_lowshot.json")
PLOT = Path("reports/plots/lowshot.csv")


def main(params_path: str = "params.yaml") -> int:
    done = run_report_stage("eval_lowshot", lowshot_report, FEATURES, REPORT, PLOT, LOWSHOT_COLUMNS, params_path)
    if done is None:
        return 1
    report, rows = done
    summary = ", ".join(f"k={r['k']}: {r['encoder']:.4f}" for r in rows)
    print(f"eval_lowshot: encoder {summary} (mean test top-1); {report['wall_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
