"""The data-validation gate: great-expectations checks over the shards and the manifest.

`validate_data` re-reads every shard once (`validation_facts.collect_facts`), turns the facts into
four pandas frames and runs the expectation catalogue (`validation_checks.build_checks`) on them
with great-expectations 1.x: an ephemeral context, one pandas data source, one suite, validation
definition and checkpoint per frame (`ijepa_data.manifest|samples|shards|splits`), and a Data Docs
site of our own (`TupleFilesystemStoreBackend` under `docs_dir`). The result is a flat report:
`success` (no `error`-severity check failed), counts, `normalization` (per-channel mean/std of the
train split's pixel sample, pixels in [0, 1]), the size of the pixel sample per split and
`checks: {name: {success, observed, expected, severity}}`: only what the shards and params determine;
the speed (`wall_s`, `images_per_s`, `s_per_10k_images`) goes to the timings file beside the report. With
`validate.expected_sizes: null` the split sizes checked are the manifest's (what `shard` produced).
`summary_lines` renders the failed checks for humans (stderr of the stage and the CLI).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from pipeline.atomic import write_json_atomic
from pipeline.config import ParamsError, ValidateParams
from pipeline.data.sources import SPLITS
from pipeline.data.validation_checks import Check, build_checks
from pipeline.data.validation_facts import Facts, ValidationInputError, collect_facts
from pipeline.timings import Stopwatch, per_s, timings_path, write_timings

SUITE = "ijepa_data"
FRAMES = ("manifest", "samples", "shards", "splits")
ID_COLUMN = {"manifest": "key", "samples": "key", "shards": "shard", "splits": "split"}
SITE = "ijepa_validation"
EXAMPLES = 5

__all__ = ["SUITE", "ValidationInputError", "run_validation", "summary_lines", "validate_data"]


def _gx_context(docs_dir: Path | None) -> Any:
    """An ephemeral, offline GX context (no analytics, no progress bars) with our Data Docs site."""
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    sites = {}
    if docs_dir is not None:
        sites[SITE] = {
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
        data_docs_sites=sites,
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _expectation(check: Check) -> Any:
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    kwargs = dict(check.kwargs)
    if check.split is not None:
        kwargs["row_condition"] = Column("split") == check.split
    return getattr(gxe, check.kind)(
        **kwargs,
        meta={"check": check.name, "severity": check.severity},
        notes=f"{check.name}: {check.doc}",
        severity="critical" if check.severity == "error" else "warning",
    )


def _result_format(frame: Any, checks: list[Check]) -> dict[str, Any]:
    """SUMMARY results whose unexpected rows carry the frame's id column (+ detail columns)."""
    wanted = [ID_COLUMN[checks[0].frame], *sorted({c for check in checks for c in check.index})]
    index = [c for c in dict.fromkeys(wanted) if c in frame.columns]
    return {"result_format": "SUMMARY", "partial_unexpected_count": EXAMPLES, "unexpected_index_column_names": index}


def run_gx(facts: Facts, checks: list[Check], docs_dir: Path | None) -> dict[str, Any]:
    """Run every check through GX checkpoints; returns {check name: ExpectationValidationResult}."""
    import great_expectations as gx

    if docs_dir is not None:
        shutil.rmtree(docs_dir, ignore_errors=True)
        docs_dir.mkdir(parents=True)
    ctx = _gx_context(docs_dir)
    source = ctx.data_sources.add_pandas("shards")
    results: dict[str, Any] = {}
    for frame in FRAMES:
        frame_checks = [c for c in checks if c.frame == frame]
        expectations = [_expectation(c) for c in frame_checks]  # one store write per suite, not per check
        suite = ctx.suites.add(gx.ExpectationSuite(name=f"{SUITE}.{frame}", expectations=expectations))
        batch = source.add_dataframe_asset(frame).add_batch_definition_whole_dataframe(frame)
        definition = ctx.validation_definitions.add(gx.ValidationDefinition(name=frame, data=batch, suite=suite))
        actions = [gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=[SITE])] if docs_dir else []
        checkpoint = ctx.checkpoints.add(
            gx.Checkpoint(
                name=f"{SUITE}.{frame}",
                validation_definitions=[definition],
                actions=actions,
                result_format=_result_format(getattr(facts, frame), frame_checks),
            )
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outcome = checkpoint.run(batch_parameters={"dataframe": getattr(facts, frame)})
        for run in outcome.run_results.values():
            for res in run.results:
                results[res.expectation_config.meta["check"]] = res
    return results


def _plain(value: Any) -> Any:
    """JSON-friendly scalars: numpy → python, floats rounded, NaN → None, lists joined."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float):
        return None if math.isnan(value) else int(value) if value.is_integer() else round(value, 6)
    if isinstance(value, (list, tuple)):
        return ", ".join(str(_plain(v)) for v in value)
    return value


def _exception(res: Any) -> str | None:
    info = res.exception_info or {}
    entries = [info] if "raised_exception" in info else list(info.values())
    for entry in entries:
        if isinstance(entry, dict) and entry.get("raised_exception"):
            return str(entry.get("exception_message") or "exception").splitlines()[0][:200]
    return None


def _examples(res: dict, check: Check) -> str | None:
    rows = res.get("partial_unexpected_index_list") or []
    shown = []
    for row in rows[:EXAMPLES]:
        if isinstance(row, dict):
            ident = row.get(ID_COLUMN[check.frame])
            extra = [f"{c}={_plain(row[c])}" for c in check.index if _plain(row.get(c)) is not None]
            shown.append(f"{ident} ({', '.join(extra)})" if extra else str(ident))
    if not shown:
        shown = [str(_plain(v)) for v in (res.get("partial_unexpected_list") or [])[:EXAMPLES]]
    return "; ".join(shown) or None


def check_entry(check: Check, res: Any) -> dict[str, Any]:
    """One report entry: success, observed value (or count of unexpected rows), expected, severity;
    failed entries add `doc` and, for row checks, `examples` (ids of up to 5 unexpected rows)."""
    entry: dict[str, Any] = {"success": bool(res.success), "severity": check.severity, "expected": check.expected}
    error = _exception(res)
    r = dict(res.result or {})
    if error:
        entry["success"] = False
        entry["observed"] = f"could not evaluate: {error}"
    elif check.kind == "ExpectTableColumnsToMatchSet":
        missing = (r.get("details") or {}).get("mismatched", {}).get("missing") or []
        entry["observed"] = f"missing {', '.join(missing)}" if missing else "all present"
    elif "observed_value" in r:
        entry["observed"] = _plain(r["observed_value"])
    elif "unexpected_count" in r:
        entry["observed"] = int(r["unexpected_count"])
        if entry["observed"]:
            entry["examples"] = _examples(r, check)
    if not entry["success"]:
        entry["doc"] = check.doc  # failed entries only: keeps `dvc metrics show` narrow
    return entry


def validate_data(shard_dir: Path, manifest: Path, params: ValidateParams, docs_dir: Path | None = None,
                  workers: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Run the whole gate and return the report (see the module docstring). Raises
    `ValidationInputError` when there is nothing to validate and `ParamsError` for bad severities."""
    return _validate(shard_dir, manifest, params, docs_dir, workers)[0]


def _validate(shard_dir: Path, manifest: Path, params: ValidateParams, docs_dir: Path | None,
              workers: int | None) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """(report, timings): the facts, and the wall times and speed of this run (pipeline/timings.py)."""
    clock = Stopwatch()
    splits = list(params.expected_sizes) if params.expected_sizes is not None else list(SPLITS)
    facts = collect_facts(shard_dir, manifest, splits, params.num_classes, workers, params.pixel_sample,
                          params.pixel_seed)  # fmt: skip
    sizes = expected_sizes(params, facts.manifest_counts)
    checks = build_checks(params, facts.num_classes, sizes)
    gx_clock = Stopwatch()
    results = run_gx(facts, checks, docs_dir)
    entries = {c.name: check_entry(c, results[c.name]) for c in checks}
    failed = [n for n, e in entries.items() if not e["success"] and e["severity"] == "error"]
    warned = [n for n, e in entries.items() if not e["success"] and e["severity"] == "warning"]
    samples = facts.samples[facts.samples["in_shards"]]
    count = {s: int((samples["split"] == s).sum()) for s in splits}
    count["total"] = len(samples)
    total_s = clock.seconds()
    timing = {
        "wall_s": {"read": round(facts.read_s, 3), "gx": gx_clock.seconds(), "total": total_s},
        "images_per_s": per_s(len(samples), total_s),
        "s_per_10k_images": round(total_s / max(len(samples), 1) * 10_000, 3),
    }
    report = {
        "success": not failed,
        "suite": SUITE,
        "checks_total": len(checks),
        "checks_failed": len(failed),
        "warnings_failed": len(warned),
        "failed": failed,
        "warnings": warned,
        "count": count,
        "shards": int(facts.shards["on_disk"].sum()),
        "num_classes": facts.num_classes,
        "normalization": facts.normalization,
        "data_docs": str(docs_dir / "index.html") if docs_dir is not None else None,
        "expected_sizes": "params" if params.expected_sizes is not None else "manifest",
        "pixel_images": {s: facts.pixel_images.get(s, 0) for s in splits},
        "checks": entries,
    }
    return report, timing


def expected_sizes(params: ValidateParams, manifest_counts: dict[str, int]) -> dict[str, int]:
    """`validate.expected_sizes`, or (null) train/val/test with the counts the manifest lists."""
    if params.expected_sizes is not None:
        return dict(params.expected_sizes)
    return {s: manifest_counts.get(s, 0) for s in SPLITS}


def _line(name: str, entry: dict[str, Any]) -> str:
    observed = entry.get("observed")
    if entry["expected"].startswith("0 unexpected"):
        observed = f"{observed} unexpected" + (f" ({entry['examples']})" if entry.get("examples") else "")
    return f"{name} [{entry['severity']}]: observed {observed}; expected {entry['expected']} -- {entry['doc']}"


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Human summary: a verdict line, then one line per failed check (errors first, then warnings)."""
    if "checks" not in report:
        return [f"validate: FAILED: {report.get('error', 'no checks ran')}"]
    n, failed, warned = report["checks_total"], report["failed"], report["warnings"]
    head = (f"validate: FAILED: {len(failed)} of {n} checks failed" if failed else
            f"validate: OK: {n - len(warned)} of {n} checks passed on {report['count']['total']} images")  # fmt: skip
    if warned:
        head += f" ({len(warned)} warning{'s' if len(warned) > 1 else ''})"
    lines = [head]
    lines += [f"  x {_line(name, report['checks'][name])}" for name in failed]
    lines += [f"  ! {_line(name, report['checks'][name])}" for name in warned]
    if (failed or warned) and report.get("data_docs"):
        lines.append(f"  details: {report['data_docs']}")
    return lines


def run_validation(shard_dir: Path, manifest: Path, params: ValidateParams, report_path: Path,
                   docs_dir: Path | None) -> tuple[int, dict[str, Any]]:  # fmt: skip
    """Validate, always write the report (also on failure) and its timings beside it (pipeline/timings.py);
    return (exit code, report plus timings)."""
    timing: dict[str, Any] = {}
    try:
        report, timing = _validate(shard_dir, manifest, params, docs_dir, None)
    except (ValidationInputError, ParamsError) as exc:
        report = {"success": False, "error": str(exc), "normalization": None}
    write_json_atomic(report_path, report)
    write_timings(timings_path(report_path), timing)
    return (0 if report["success"] else 1), {**report, **timing}
