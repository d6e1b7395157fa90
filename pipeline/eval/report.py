"""The two evaluation reports (`reports/eval_linear.json`, `reports/eval_lowshot.json`) and their plots.

Owns the flat key scheme and the CSV plot files. All accuracies are **fractions in [0, 1]**, rounded
to 4 decimals. Keys are `<protocol>[.<setting>].<metric>` for the pretrained encoder, and the same key
under a prefix for the baselines (`pipeline.eval.baselines`):

    linear.val_top1  linear.test_top1  linear.test_top5      val = C selection / sweeps; test = the result
    linear.best_c  linear.train_size  linear.fit_split       fit_split = "train" (no refit on train+val)
    linear.class<i>.test_top1                                per-class test top-1 (encoder only)
    knn.k<k>.test_top1                                       weighted kNN (centred features), one per eval.knn_k
    collapse.effective_rank  collapse.common_share           of the train features (pipeline/collapse.py)
    collapse.dim_std_mean  collapse.dim_std_min  collapse.dead_dim_fraction
    lowshot.k<k>.mean  lowshot.k<k>.std                      k labelled images per class, over seeds
    lowshot.pct<p>.mean  lowshot.pct<p>.std  lowshot.pct<p>.train_size   p % of labels ("0.5" -> "0_5")
    baseline.raw.<key>  baseline.random.<key>                raw pixels / random-init encoder, same key
    delta.raw.<key>  delta.random.<key>                      encoder minus baseline, accuracy keys only
    features.dim  features.last_layers  features.precision  features.train_size  encoder.step

Plots: `reports/plots/accuracy_vs_step.csv` (step, linear_test_top1, linear_val_top1: every snapshot
and the final encoder, all probed on the same snapshot subset of keys so the points are comparable)
and `reports/plots/lowshot.csv` (k, encoder, random_init, raw_pixels: mean test top-1 per k).
The stage's wall time goes to reports/timings/<report name> (pipeline/timings.py), so the reports are
byte-identical for the same features.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from pipeline.atomic import write_csv_atomic, write_json_atomic
from pipeline.collapse import collapse_stats
from pipeline.config import EvalParams, ParamsError, load_section
from pipeline.eval.baselines import BASELINES, ENCODER, SETS, Metrics, compare, evaluate_sets
from pipeline.eval.features import FeatureSet, load_features, read_index
from pipeline.eval.knn import knn_accuracy
from pipeline.eval.linear import linear_probe
from pipeline.eval.lowshot import lowshot_eval
from pipeline.timings import Stopwatch, timings_path, write_timings

ACCURACY_VS_STEP_COLUMNS = ["step", "linear_test_top1", "linear_val_top1"]
LOWSHOT_COLUMNS = ["k", ENCODER, *sorted(BASELINES.values())]  # k, encoder, random_init, raw_pixels


def _r(x: float) -> float:
    return round(float(x), 4)


def linear_metrics(splits: dict[str, FeatureSet], params: EvalParams) -> Metrics:
    """Linear probe + weighted kNN on one feature set, as flat keys."""
    probe = linear_probe(splits["train"], splits["val"], splits["test"], params.c_grid, patience=params.c_patience)
    if probe.best_c_at_edge and len(set(probe.val_by_c.values())) > 1:
        by_c = ", ".join(f"{c:g}: {a:.4f}" for c, a in probe.val_by_c.items())
        print(f"note: best C {probe.best_c:g} is at the edge of eval.c_grid (val top-1 by C: {by_c})")
    out: Metrics = {
        "linear.val_top1": _r(probe.val_top1),
        "linear.test_top1": _r(probe.test_top1),
        "linear.test_top5": _r(probe.test_top5),
        "linear.best_c": probe.best_c,
        "linear.train_size": probe.train_size,
        "linear.fit_split": "train",
    }
    out.update({f"linear.class{i}.test_top1": _r(a) for i, a in enumerate(probe.per_class)})
    knn = knn_accuracy(
        splits["train"], splits["test"], params.knn_k, temperature=params.knn_temperature, center=params.knn_center
    )
    out.update({f"knn.k{k}.test_top1": _r(a) for k, a in knn.items()})
    out.update({f"collapse.{k}": v for k, v in collapse_stats(splits["train"].features).items()})
    return out


def step_curve(features_root: Path | str, params: EvalParams) -> list[dict]:
    """accuracy_vs_step rows: the linear protocol on every snapshot and on the final encoder."""
    index = read_index(features_root)
    snaps = index.get("snapshots", [])
    final = load_features(features_root, ENCODER)
    points: list[tuple[int, dict[str, FeatureSet]]] = []
    for snap in snaps:
        points.append((int(snap["step"]), load_features(features_root, snap["set"])))
    if points:  # probe the final encoder on the snapshots' keys, so every point uses the same data
        final = {s: fs.select_keys(points[0][1][s].keys) for s, fs in final.items()}
    final_step = int(index["encoder"].get("step") or 0)
    points = [p for p in points if p[0] != final_step] + [(final_step, final)]
    rows = []
    for step, splits in sorted(points, key=lambda p: p[0]):
        probe = linear_probe(splits["train"], splits["val"], splits["test"], params.c_grid, patience=params.c_patience)
        rows.append({"step": step, "linear_test_top1": _r(probe.test_top1), "linear_val_top1": _r(probe.val_top1)})
    return rows


def _context(features_root: Path | str) -> Metrics:
    index = read_index(features_root)
    enc = index["sets"][ENCODER]
    return {
        "features.dim": enc["dim"],
        "features.last_layers": index["last_layers"],
        "features.precision": index["precision"],
        "features.train_size": enc["count"]["train"],
        "encoder.step": int(index["encoder"].get("step") or 0),
    }


def linear_report(features_root: Path | str, params: EvalParams) -> tuple[Metrics, list[dict]]:
    """(reports/eval_linear.json content, accuracy_vs_step rows)."""
    report = compare(evaluate_sets(features_root, lambda s: linear_metrics(s, params)))
    rows = step_curve(features_root, params)
    return {**report, **_context(features_root)}, rows


def lowshot_metrics(splits: dict[str, FeatureSet], params: EvalParams, train_split_size: int | None = None) -> Metrics:
    """Every low-shot setting on one feature set, as flat keys (percent of `train_split_size` labels)."""
    results = lowshot_eval(
        splits["train"], splits["val"], splits["test"], params.lowshot_k, params.lowshot_seeds, params.c_grid,
        percent=params.lowshot_percent, percent_base=train_split_size, patience=params.c_patience,
        cv_folds=params.lowshot_cv_folds,
    )  # fmt: skip
    out: Metrics = {}
    for name, res in results.items():
        out[f"lowshot.{name}.mean"] = _r(res.mean)
        out[f"lowshot.{name}.std"] = _r(res.std)
        if name.startswith("pct"):
            out[f"lowshot.{name}.train_size"] = res.train_size
    return out


def lowshot_report(features_root: Path | str, params: EvalParams) -> tuple[Metrics, list[dict]]:
    """(reports/eval_lowshot.json content, lowshot.csv rows)."""
    full_train = read_index(features_root).get("split_sizes", {}).get("train")
    by_set = evaluate_sets(features_root, lambda s: lowshot_metrics(s, params, full_train))
    rows = [{"k": k, **{name: by_set[name][f"lowshot.k{k}.mean"] for name in SETS}} for k in params.lowshot_k]
    return {**compare(by_set), "lowshot.seeds": params.lowshot_seeds, **_context(features_root)}, rows


def run_report_stage(
    stage: str,
    make: Callable[[Path, EvalParams], tuple[Metrics, list[dict]]],
    features_root: Path,
    report_path: Path,
    plot_path: Path,
    columns: list[str],
    params_path: str = "params.yaml",
) -> tuple[Metrics, list[dict]] | None:
    """What both eval stages do: read params `eval`, build the report from the feature cache, write the
    JSON report, the plot CSV and the timings (`wall_s`) atomically; returns (report plus timings, rows).
    Bad params or a missing cache print `<stage>: error: …` to stderr and return None (nothing is written)."""
    clock = Stopwatch()
    try:
        report, rows = make(features_root, load_section("eval", params_path, EvalParams))
    except (ParamsError, FileNotFoundError, ValueError) as exc:
        print(f"{stage}: error: {exc}", file=sys.stderr)
        return None
    write_json_atomic(report_path, report)
    write_csv_atomic(plot_path, rows, columns)
    timing = {"wall_s": clock.seconds(2)}
    write_timings(timings_path(report_path), timing)
    return {**report, **timing}, rows
