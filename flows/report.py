"""Markdown for the flows' Prefect artifacts: stage outcomes, encoder-vs-baseline metrics, links, revision,
and the figures (registry/figures/*.png, embedded as data: URIs so they show wherever the UI runs).

Plain string building over the report JSONs (tolerant of missing or partial files), so it is tested
without Prefect. Metric keys follow pipeline/eval/report.py: `linear.test_top1` for the encoder and
`baseline.raw.linear.test_top1` / `baseline.random.linear.test_top1` for the baselines.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.figures import existing_figures
from pipeline.sweep_space import flatten

METRIC_FILES = ("reports/eval_linear.json", "reports/eval_lowshot.json")
DATA_DOCS = "reports/data_docs/index.html"
MODEL_CARD = "registry/model_card.md"
BASELINES = {"raw": "raw pixels", "random": "random-init ViT"}
MAX_ROWS = 40


def read_metrics(root: Path, files: Sequence[str] = METRIC_FILES) -> dict[str, Any]:
    """Flat metrics of every report that exists and parses; unreadable files are skipped."""
    out: dict[str, Any] = {}
    for rel in files:
        try:
            data = json.loads((root / rel).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, Mapping):
            out.update(flatten(data))
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def metrics_table(metrics: Mapping[str, Any]) -> str:
    """Rows: encoder metrics that have a baseline counterpart (else every numeric metric)."""
    numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    encoder = [k for k in numeric if not k.startswith("baseline.")]
    paired = [k for k in encoder if any(f"baseline.{b}.{k}" in numeric for b in BASELINES)]
    if not numeric:
        return "_No metrics yet (reports/eval_linear.json, reports/eval_lowshot.json not found)._"
    if not paired:
        rows = [f"| {k} | {_fmt(numeric[k])} |" for k in sorted(numeric)[:MAX_ROWS]]
        return "\n".join(["| metric | value |", "|---|---|", *rows])
    head = "| metric | encoder | " + " | ".join(BASELINES.values()) + " |"
    sep = "|---|---|" + "---|" * len(BASELINES)
    rows = []
    for key in paired[:MAX_ROWS]:
        base = " | ".join(_fmt(numeric.get(f"baseline.{b}.{key}")) for b in BASELINES)
        rows.append(f"| {key} | {_fmt(numeric[key])} | {base} |")
    return "\n".join([head, sep, *rows])


def stages_table(outcomes: Sequence[Mapping[str, Any]], failed: str | None = None) -> str:
    label = {"cached": "cached", "restored": "cached (restored from run cache)", "ran": "ran"}
    rows = [f"| {o['stage']} | {label.get(o['status'], o['status'])} | {o.get('seconds', 0):.1f} |" for o in outcomes]
    if failed:
        rows.append(f"| {failed} | **failed** | – |")
    return "\n".join(["| stage | status | seconds |", "|---|---|---|", *rows])


def links(root: Path) -> list[tuple[str, str, bool]]:
    """(label, file:// URL, exists) for the Data Docs and the model card."""
    return [
        ("Data Docs (great-expectations)", (root / DATA_DOCS).resolve().as_uri(), (root / DATA_DOCS).exists()),
        ("Model card", (root / MODEL_CARD).resolve().as_uri(), (root / MODEL_CARD).exists()),
    ]


def figures_markdown(root: Path) -> str | None:
    """The rendered figures as markdown images (inline PNG data), with their file paths; None if none."""
    found = existing_figures(root)
    if not found:
        return None
    parts = ["# ijepa-pipeline: figures"]
    for fig, rel in found:
        data = base64.b64encode((root / rel).read_bytes()).decode("ascii")
        parts.append(f"## {fig.title}\n\n![{fig.title}](data:image/png;base64,{data})\n\n`{rel.as_posix()}`")
    return "\n\n".join(parts) + "\n"


def revision_line(rev: Mapping[str, Any]) -> str:
    commit = rev.get("git_commit") or "no commit"
    dirty = " + uncommitted changes" if rev.get("git_dirty") else ""
    exp = f", experiment `{rev['experiment']}`" if rev.get("experiment") else ""
    return (f"git `{str(commit)[:12]}`{dirty} (branch {rev.get('git_branch') or '?'}), "
            f"dvc.lock sha256 `{rev.get('dvc_lock_sha256') or 'none'}`{exp}")  # fmt: skip


def pipeline_markdown(root: Path, summary: Mapping[str, Any]) -> str:
    """The run report: status, revision, stage table, metrics table, links."""
    status = f"**failed** at `{summary['failed_stage']}`" if summary.get("failed_stage") else "completed"
    parts = [
        f"# ijepa-pipeline: {status}",
        f"Project `{root}`; target `{summary.get('target') or 'all stages'}`"
        + (f"; overrides `{' '.join(summary['overrides'])}`" if summary.get("overrides") else ""),
        f"Revision: {revision_line(summary.get('revision', {}))}",
        "## Stages",
        stages_table(summary.get("stages", []), summary.get("failed_stage")),
    ]
    if summary.get("error"):
        parts += ["## Error", "```", str(summary["error"])[:4000], "```"]
    parts += ["## Metrics: encoder vs baselines", metrics_table(read_metrics(root)), "## Links"]
    parts.append("\n".join(f"- {label}: [{url}]({url})" + ("" if exists else " (not built yet)")
                           for label, url, exists in links(root)))  # fmt: skip
    return "\n\n".join(parts) + "\n"


def sweep_markdown(summary: Mapping[str, Any]) -> str:
    """The sweep report: best trial and every trial with its experiment."""
    best = summary.get("best")
    head = [f"# ijepa-sweep `{summary['study']}`", f"Storage `{summary['storage']}`; objective "
            f"`{summary['objective']}` ({summary['direction']})"]  # fmt: skip
    if best:
        head.append(f"**Best**: trial {best['number']} = experiment `{best['exp_name']}`, "
                    f"{summary['objective']} = {_fmt(best['value'])}; `dvc exp apply {best['exp_name']}`")  # fmt: skip
    else:
        head.append("**No finished trial.**")
    rows = ["| trial | experiment | state | value | params |", "|---|---|---|---|---|"]
    for t in summary.get("trials", []):
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in t.get("params", {}).items())
        rows.append(f"| {t['number']} | {t.get('exp_name', '')} | {t['state']} | {_fmt(t.get('value'))} | {params} |")
    return "\n\n".join([*head, "\n".join(rows)]) + "\n"
