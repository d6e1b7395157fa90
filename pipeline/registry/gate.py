"""The registry's quality gate: every `register` threshold checked against the evaluation reports.

`evaluate_gate` returns one `GateCheck` per configured threshold (observed vs required, passed, the
param that sets it); a missing metric fails its check. `GateFailed` names every unmet threshold. Used by
the `register` stage (pipeline/registry/entry.py) and by the headline (`gate.passed`, pipeline/headline.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import RegisterParams

RANK_KEY = "collapse.effective_rank"  # eval_linear.json (pipeline/collapse.py)


@dataclass(frozen=True)
class GateCheck:
    """One threshold of the quality gate."""

    name: str
    observed: float | bool | None
    required: float | bool
    passed: bool
    param: str

    def describe(self) -> str:
        obs = "missing" if self.observed is None else _fmt(self.observed)
        op = "==" if isinstance(self.required, bool) else ">="
        verdict = "ok" if self.passed else "UNMET"
        return f"{self.name}: observed {obs}, required {op} {_fmt(self.required)} ({self.param}) [{verdict}]"


class GateFailed(RuntimeError):
    """The quality gate failed; `checks` holds every check, passed or not."""

    def __init__(self, checks: list[GateCheck]) -> None:
        unmet = [c for c in checks if not c.passed]
        super().__init__("quality gate failed, unmet thresholds:\n" + "\n".join(f"  {c.describe()}" for c in unmet))
        self.checks = checks


def _fmt(value: float | bool) -> str:
    return str(value).lower() if isinstance(value, bool) else f"{value:.4f}"


def _number(report: dict, key: str) -> float | None:
    value = report.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def evaluate_gate(params: RegisterParams, metrics: dict, validation: dict | None) -> list[GateCheck]:
    """Every configured threshold against the eval reports' keys (`metrics`: eval_linear.json and
    eval_lowshot.json merged); a missing metric fails its check."""
    metric = params.metric
    value = _number(metrics, metric)
    checks = [
        GateCheck(
            metric,
            value,
            params.min_linear_top1,
            value is not None and value >= params.min_linear_top1,
            "register.min_linear_top1",
        )
    ]
    margin_metric = params.margin_metric or metric
    margin_value = _number(metrics, margin_metric)
    for name, label, minimum in (
        ("random", "random-init", params.min_margin_over_random),
        ("raw", "raw pixels", params.min_margin_over_raw),
    ):
        if minimum is None:
            continue
        base = _number(metrics, f"baseline.{name}.{margin_metric}")
        margin = None if margin_value is None or base is None else round(margin_value - base, 6)
        passed = margin is not None and margin >= minimum
        checks.append(
            GateCheck(
                f"margin of {margin_metric} over {label} (baseline.{name}.{margin_metric})",
                margin,
                minimum,
                passed,
                f"register.min_margin_over_{name}",
            )
        )
    if params.min_effective_rank is not None:
        rank = _number(metrics, RANK_KEY)
        checks.append(
            GateCheck(
                f"effective rank of the encoder's pooled features ({RANK_KEY}; collapsed encoders score ~1-2)",
                rank,
                params.min_effective_rank,
                rank is not None and rank >= params.min_effective_rank,
                "register.min_effective_rank",
            )
        )
    if params.require_validation:
        ok = (validation or {}).get("success")
        observed = None if ok is None else bool(ok)
        checks.append(
            GateCheck(
                "validation passed (reports/validation.json success)",
                observed,
                True,
                ok is True,
                "register.require_validation",
            )
        )
    return checks
