"""The headline metrics (`reports/headline.json`): the ~20 numbers a person picks an experiment by.

The only stage output declared as DVC `metrics` (the other is reports/timings/pretrain.json, the training
time and speed: pipeline/timings.py), so `dvc exp show` / `dvc exp diff` / `dvc metrics show` stay a
screen wide; every other number stays in its stage report (plain outs). Byte-identical for the same
reports (no timings). Layout, nested so that DVC shows the columns as `encoder.linear`,
`random.linear`, `raw.linear`, ...:

    encoder.{linear, knn<k>, shot<k>, pct<p>, rank, common}   the pretrained encoder
    random.{linear, knn<k>, shot<k>, pct<p>, rank}            the random-init encoder (same architecture)
    raw.{linear, knn<k>, shot<k>, pct<p>, rank}               raw pixels
    pretrain.loss                                             reports/pretrain.json final_loss
    gate.passed                                               the registry's quality gate (pipeline/registry/gate.py)

`linear` = linear-probe test top-1, `knn<k>` = weighted kNN test top-1, `shot<k>` = k labels per class
(mean over seeds), `pct<p>` = p % of the labels (mean), all fractions in [0, 1]; `rank` = effective rank
and `common` = common-energy share of the pooled features (pipeline/collapse.py). k is 10 (kNN and
low-shot) and p is 1 when evaluated, else the smallest evaluated setting; the key names the setting.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.config import RegisterParams

HEADLINE = Path("reports/headline.json")
STAGE_REPORTS = {  # every stage report a run leaves (the registry entry reads them all)
    "shard": Path("reports/shard.json"),
    "validation": Path("reports/validation.json"),
    "pretrain": Path("reports/pretrain.json"),
    "eval_linear": Path("reports/eval_linear.json"),
    "eval_lowshot": Path("reports/eval_lowshot.json"),
}
REPORTS = {name: path for name, path in STAGE_REPORTS.items() if name != "shard"}  # what the headline reads
GROUPS = (("encoder", ""), ("random", "baseline.random."), ("raw", "baseline.raw."))
PREFERRED = {"knn": 10, "shot": 10, "pct": 1}


class HeadlineInputError(RuntimeError):
    """A report the headline is built from is missing or not a JSON object."""


def _number(value: Any) -> float | None:
    return round(float(value), 4) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _settings(report: Mapping[str, Any], pattern: str) -> list[str]:
    """Setting names (`10`, `0_5`) of the encoder's keys matching `pattern` (one group: the setting)."""
    found = [m.group(1) for key in report if (m := re.fullmatch(pattern, key))]
    return sorted(found, key=lambda s: float(s.replace("_", ".")))


def _pick(settings: list[str], preferred: int) -> str | None:
    if not settings:
        return None
    return str(preferred) if str(preferred) in settings else settings[0]


def headline_keys(linear: Mapping[str, Any], lowshot: Mapping[str, Any]) -> dict[str, str]:
    """Short name -> report key (encoder's) of the accuracy and collapse columns, e.g. `knn10` ->
    `knn.k10.test_top1`; a protocol that was not evaluated is left out."""
    keys = {"linear": "linear.test_top1"}
    knn = _pick(_settings(linear, r"knn\.k(\d+)\.test_top1"), PREFERRED["knn"])
    shot = _pick(_settings(lowshot, r"lowshot\.k(\d+)\.mean"), PREFERRED["shot"])
    pct = _pick(_settings(lowshot, r"lowshot\.pct([\d_]+)\.mean"), PREFERRED["pct"])
    if knn:
        keys[f"knn{knn}"] = f"knn.k{knn}.test_top1"
    if shot:
        keys[f"shot{shot}"] = f"lowshot.k{shot}.mean"
    if pct:
        keys[f"pct{pct}"] = f"lowshot.pct{pct}.mean"
    keys["rank"] = "collapse.effective_rank"
    keys["common"] = "collapse.common_share"
    return keys


def headline(
    linear: Mapping[str, Any],
    lowshot: Mapping[str, Any],
    pretrain: Mapping[str, Any],
    gate_passed: bool | None,
) -> dict[str, Any]:
    """The nested headline dict from the eval and pretrain reports and the gate verdict. Metrics absent
    from the reports are left out (never written as null, so DVC shows `-` only where nothing exists)."""
    merged = {**linear, **lowshot}
    keys = headline_keys(linear, lowshot)
    out: dict[str, Any] = {}
    for group, prefix in GROUPS:
        values = {}
        for short, key in keys.items():
            if short == "common" and group != "encoder":
                continue  # the baselines' common share says nothing about an experiment
            value = _number(merged.get(prefix + key))
            if value is not None:
                values[short] = value
        out[group] = values
    loss = _number(pretrain.get("final_loss"))
    out["pretrain"] = {} if loss is None else {"loss": loss}
    out["gate"] = {"passed": gate_passed}
    return out


def read_report(root: Path, rel: Path) -> dict[str, Any]:
    path = root / rel
    if not path.is_file():
        raise HeadlineInputError(f"{rel}: not found (run the upstream stages first: dvc repro)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise HeadlineInputError(f"{rel}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise HeadlineInputError(f"{rel}: expected a JSON object, got {type(data).__name__}")
    return data


def headline_from_reports(root: Path | str, params: RegisterParams) -> dict[str, Any]:
    """The headline of the workspace under `root`; `gate.passed` is the registry gate's verdict with
    `params` (the same `evaluate_gate` the register stage runs)."""
    from pipeline.registry.gate import evaluate_gate

    reports = {name: read_report(Path(root), rel) for name, rel in REPORTS.items()}
    linear, lowshot = reports["eval_linear"], reports["eval_lowshot"]
    checks = evaluate_gate(params, {**linear, **lowshot}, reports["validation"])
    return headline(linear, lowshot, reports["pretrain"], all(c.passed for c in checks))
