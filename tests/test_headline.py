"""The headline metrics (pipeline/headline.py): the few numbers `dvc exp show` compares."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import RegisterParams
from pipeline.headline import HeadlineInputError, headline, headline_from_reports, headline_keys
from pipeline.sweep_space import flatten

ACC = {"linear.test_top1": 0.81, "knn.k10.test_top1": 0.64, "knn.k20.test_top1": 0.65}
COLLAPSE = {"collapse.effective_rank": 7.25, "collapse.common_share": 0.31, "collapse.dim_std_min": 0.1}
LINEAR = {
    **ACC,
    **COLLAPSE,
    "linear.val_top1": 0.8,
    "linear.class3.test_top1": 0.5,
    **{f"baseline.random.{k}": v - 0.1 for k, v in {**ACC, **COLLAPSE}.items()},
    **{f"baseline.raw.{k}": v + 0.02 for k, v in {**ACC, **COLLAPSE}.items()},
    "delta.raw.linear.test_top1": -0.02,
}
SHOT = {"lowshot.k1.mean": 0.3, "lowshot.k10.mean": 0.57, "lowshot.k10.std": 0.01, "lowshot.pct1.mean": 0.69}
LOWSHOT = {**SHOT, **{f"baseline.{b}.{k}": v / 2 for b in ("random", "raw") for k, v in SHOT.items()}}
PRETRAIN = {"final_loss": 0.0444740686, "steps": 858, "device": "cpu"}


def test_headline_has_the_comparison_columns_and_nothing_else() -> None:
    cols = flatten(headline(LINEAR, LOWSHOT, PRETRAIN, True))
    assert cols == {
        "encoder.linear": 0.81, "encoder.knn10": 0.64, "encoder.shot10": 0.57, "encoder.pct1": 0.69,
        "encoder.rank": 7.25, "encoder.common": 0.31,
        "random.linear": 0.71, "random.knn10": 0.54, "random.shot10": 0.285, "random.pct1": 0.345,
        "random.rank": 7.15,
        "raw.linear": 0.83, "raw.knn10": 0.66, "raw.shot10": 0.285, "raw.pct1": 0.345, "raw.rank": 7.27,
        "pretrain.loss": 0.0445,
        "gate.passed": True,
    }  # fmt: skip
    assert len(cols) <= 30


def test_settings_fall_back_to_what_was_evaluated_and_say_so_in_the_key() -> None:
    linear = {"linear.test_top1": 0.5, "knn.k20.test_top1": 0.4, "knn.k5.test_top1": 0.3}
    lowshot = {"lowshot.k1.mean": 0.2, "lowshot.k5.mean": 0.3, "lowshot.pct0_5.mean": 0.35, "lowshot.pct2.mean": 0.4}
    keys = headline_keys(linear, lowshot)
    assert keys["knn5"] == "knn.k5.test_top1" and keys["shot1"] == "lowshot.k1.mean"
    assert keys["pct0_5"] == "lowshot.pct0_5.mean"
    head = headline(linear, lowshot, {}, False)
    assert head["encoder"] == {"linear": 0.5, "knn5": 0.3, "shot1": 0.2, "pct0_5": 0.35}  # no collapse keys: left out
    assert head["random"] == {} and head["pretrain"] == {} and head["gate"] == {"passed": False}


def write_reports(root: Path, **over: dict) -> None:
    reports = {"validation": {"success": True}, "pretrain": PRETRAIN, "eval_linear": LINEAR, "eval_lowshot": LOWSHOT}
    reports.update(over)
    for name, data in reports.items():
        (root / "reports").mkdir(exist_ok=True)
        (root / "reports" / f"{name}.json").write_text(json.dumps(data))


def test_gate_verdict_is_the_registry_gate(tmp_path: Path) -> None:
    write_reports(tmp_path)
    passing = RegisterParams(min_linear_top1=0.8, margin_metric="lowshot.k10.mean", min_margin_over_random=0.2)
    assert headline_from_reports(tmp_path, passing)["gate"]["passed"] is True
    too_strict = RegisterParams(min_linear_top1=0.8, margin_metric="lowshot.k10.mean", min_margin_over_random=0.3)
    assert headline_from_reports(tmp_path, too_strict)["gate"]["passed"] is False
    write_reports(tmp_path, validation={"success": False})
    assert headline_from_reports(tmp_path, passing)["gate"]["passed"] is False


def test_missing_or_broken_report_is_named(tmp_path: Path) -> None:
    write_reports(tmp_path)
    (tmp_path / "reports" / "pretrain.json").unlink()
    with pytest.raises(HeadlineInputError, match=r"reports/pretrain.json: not found"):
        headline_from_reports(tmp_path, RegisterParams())
    write_reports(tmp_path)
    (tmp_path / "reports" / "eval_lowshot.json").write_text("[1, 2]")
    with pytest.raises(HeadlineInputError, match=r"reports/eval_lowshot.json: expected a JSON object"):
        headline_from_reports(tmp_path, RegisterParams())
