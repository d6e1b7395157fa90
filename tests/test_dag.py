"""Pure parts of the orchestration: stage graph order, sweep space -> overrides, artifact markdown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from flows.report import metrics_table, pipeline_markdown, sweep_markdown
from pipeline.config import ParamsError, SpaceParam, SweepParams, parse_section
from pipeline.dag import (
    DagError,
    StageSpec,
    ancestors,
    descendants,
    stages_from_yaml,
    stages_reading_param,
    topological_order,
)
from pipeline.sweep_space import decode_params, format_value, metric, read_curve, suggest, to_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_project_dvc_yaml_order_follows_data_flow() -> None:
    stages = stages_from_yaml(ROOT / "dvc.yaml")
    order = topological_order(stages)
    assert order[0] == "shard" and set(order) == {s.name for s in stages}
    pos = {n: i for i, n in enumerate(order)}
    for stage in stages:  # every producer comes before its consumer
        for other in stages:
            if any(d == o or d.startswith(o + "/") for d in stage.deps for o in other.outs):
                assert pos[other.name] < pos[stage.name], (other.name, stage.name)
    assert topological_order(stages, "shard") == ["shard"]


def test_new_stage_is_picked_up_and_ties_keep_file_order(tmp_path: Path) -> None:
    doc = {
        "stages": {
            "report": {"cmd": "r", "deps": ["out/b.txt", "out/a"], "outs": ["final.md"]},
            "b": {"cmd": "b", "deps": ["src"], "params": ["b"], "outs": ["out/b.txt"]},
            "a": {"cmd": "a", "deps": ["src"], "params": [{"other.yaml": ["x.y"]}], "outs": ["out/a"]},
            "a_child": {"cmd": "c", "deps": ["out/a/part.bin"], "metrics": [{"m.json": {"cache": False}}]},
            "lone": {"cmd": "l", "wdir": "sub", "deps": ["../out/b.txt"], "plots": ["p.csv"]},
        }
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    stages = stages_from_yaml(tmp_path / "dvc.yaml")
    assert topological_order(stages) == ["b", "a", "report", "a_child", "lone"]
    assert topological_order(stages, "report") == ["b", "a", "report"]
    assert ancestors(stages, "a_child") == {"a"}
    assert descendants(stages, "b") == {"report", "lone"}
    assert stages_reading_param(stages, "b.lr") == {"b"}
    assert stages_reading_param(stages, "other.yaml:x") == {"a"}
    assert next(s for s in stages if s.name == "lone").deps == ("out/b.txt",)


def test_cycle_and_unknown_stage_are_errors() -> None:
    loop = [StageSpec("x", deps=("b",), outs=("a",)), StageSpec("y", deps=("a",), outs=("b",))]
    with pytest.raises(DagError, match="cycle"):
        topological_order(loop)
    with pytest.raises(DagError, match="unknown stage 'z'"):
        topological_order(loop, "z")


class FakeTrial:
    """Deterministic stand-in for optuna.Trial: always the low end / first choice."""

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:  # fmt: skip
        return low

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return high

    def suggest_categorical(self, name: str, choices: list) -> object:
        return choices[-1]


def test_space_suggest_and_overrides_roundtrip() -> None:
    params = parse_section("sweep", yaml.safe_load((ROOT / "params.yaml").read_text())["sweep"])
    assert isinstance(params, SweepParams) and params.objective == "linear.val_top1"
    values = suggest(FakeTrial(), params.space)
    assert values["train.lr"] == params.space["train.lr"].low
    assert values["model.pred_depth"] == 4
    assert values["mask.target_scale"] == params.space["mask.target_scale"].choices[-1]  # a list, decoded
    overrides = to_overrides(values)
    assert "model.pred_depth=4" in overrides
    assert any(o.startswith("mask.target_scale=[") for o in overrides)
    stored = {"mask.target_scale": json.dumps([0.1, 0.15]), "train.lr": 0.001}
    assert decode_params(stored, params.space) == {"mask.target_scale": [0.1, 0.15], "train.lr": 0.001}
    assert format_value(True) == "true" and format_value(None) == "null" and format_value("a b") == '"a b"'
    assert format_value({"k": [1, 2.5]}) == "{k:[1,2.5]}"


def test_space_validation_names_the_key() -> None:
    with pytest.raises(ParamsError, match="sweep.space.train.lr"):
        parse_section("sweep", {"space": {"train.lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}})
    with pytest.raises(ValueError):
        SpaceParam(type="categorical", choices=[])


def test_metric_lookup_and_curve_parsing() -> None:
    assert metric({"linear": {"val_top1": 0.5}}, "linear.val_top1") == 0.5
    assert metric({"linear.val_top1": 0.25}, "linear.val_top1") == 0.25
    with pytest.raises(KeyError, match="linear.val_top1"):
        metric({"other": 1}, "linear.val_top1")
    with pytest.raises(ValueError):
        metric({"x": float("nan")}, "x")
    tsv = "timestamp\tstep\tloss\n1\t0\t1.5\n2\t1\t1.2\n3\t2\t1."  # last line still being written
    assert read_curve(tsv, "loss") == [(0, 1.5), (1, 1.2)]
    assert read_curve(tsv, "missing") == [] and read_curve("", "loss") == []


def test_markdown_tolerates_missing_reports(tmp_path: Path) -> None:
    summary = {"stages": [{"stage": "shard", "status": "cached", "seconds": 0.1}], "revision": {}}
    md = pipeline_markdown(tmp_path, summary)
    assert "| shard | cached |" in md and "No metrics yet" in md and "not built yet" in md
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/eval_linear.json").write_text(
        json.dumps(
            {"linear.test_top1": 0.8, "baseline.raw.linear.test_top1": 0.84, "baseline.random.linear.test_top1": 0.6}
        )
    )
    (tmp_path / "reports/eval_lowshot.json").write_text("{not json")
    table = metrics_table({"linear.test_top1": 0.8, "baseline.raw.linear.test_top1": 0.84})
    assert "| linear.test_top1 | 0.8000 | 0.8400 | – |" in table
    md = pipeline_markdown(tmp_path, {**summary, "failed_stage": "pretrain", "error": "boom"})
    assert "failed** at `pretrain`" in md and "0.6000" in md and "boom" in md
    sweep = {
        "study": "s",
        "storage": "sqlite://",
        "objective": "linear.val_top1",
        "direction": "maximize",
        "best": None,
        "trials": [{"number": 0, "state": "fail", "value": None, "exp_name": "trial-s-0"}],
    }
    assert "No finished trial" in sweep_markdown(sweep)
