"""DVC stage `eval_linear`: linear probe + weighted kNN of the encoder and its baselines.

Reads params `eval` (c_grid, knn_k, knn_temperature) and data/features/; writes reports/eval_linear.json
(flat keys: pipeline/eval/report.py) and reports/plots/accuracy_vs_step.csv, each atomically.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.config import ParamsError, load_section
from pipeline.data.shards import write_json_atomic
from pipeline.eval.report import ACCURACY_VS_STEP_COLUMNS, linear_report, write_csv_atomic

FEATURES = Path("data/features")
REPORT = Path("reports/eval_linear.json")
PLOT = Path("reports/plots/accuracy_vs_step.csv")


def main(params_path: str = "params.yaml") -> int:
    try:
        report, rows = linear_report(FEATURES, load_section("eval", params_path))
    except (ParamsError, FileNotFoundError, ValueError) as exc:
        print(f"eval_linear: error: {exc}", file=sys.stderr)
        return 1
    write_json_atomic(REPORT, report)
    write_csv_atomic(PLOT, rows, ACCURACY_VS_STEP_COLUMNS)
    print(
        f"eval_linear: test top-1 {report['linear.test_top1']:.4f} (val {report['linear.val_top1']:.4f}, "
        f"C={report['linear.best_c']:g}); raw pixels {report['baseline.raw.linear.test_top1']:.4f}, "
        f"random init {report['baseline.random.linear.test_top1']:.4f}; {len(rows)} curve points, "
        f"{report['wall_s']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
