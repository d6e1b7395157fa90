"""DVC stage `eval_linear`: linear probe + weighted kNN of the encoder and its baselines.

Reads params `eval` (c_grid, c_patience, knn_k, knn_temperature) and data/features/; writes
reports/eval_linear.json (flat keys: pipeline/eval/report.py) and reports/plots/accuracy_vs_step.csv,
each atomically.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.eval.report import ACCURACY_VS_STEP_COLUMNS, linear_report, run_report_stage

FEATURES = Path("data/features")
REPORT = Path("reports/eval_linear.json")
PLOT = Path("reports/plots/accuracy_vs_step.csv")


def main(params_path: str = "params.yaml") -> int:
    done = run_report_stage("eval_linear", linear_report, FEATURES, REPORT, PLOT, ACCURACY_VS_STEP_COLUMNS, params_path)
    if done is None:
        return 1
    report, rows = done
    print(
        f"eval_linear: test top-1 {report['linear.test_top1']:.4f} (val {report['linear.val_top1']:.4f}, "
        f"C={report['linear.best_c']:g}); raw pixels {report['baseline.raw.linear.test_top1']:.4f}, "
        f"random init {report['baseline.random.linear.test_top1']:.4f}; {len(rows)} curve points, "
        f"{report['wall_s']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
