"""Stage-level input gate: a stage that reads the shards refuses inputs that failed validation or that
changed since they were written.

- `require_validation_passed`: `reports/validation.json` must say `success: true` (a stage run alone,
  `dvc repro -s pretrain` or `python -m stages.pretrain`, would otherwise train on data the gate refused).
- `verify_shards`: every tar of a split directory must have the sha256 that `reports/shard.json`
  (`shard_sha256`, written by the `shard` stage while it wrote the tars) records for it, and every shard the
  report lists must be there: a truncated, edited, added or removed shard is named in a one-line error.

Neither file is a DVC dependency of the stages that call these checks: they only ever refuse, they never
change what a stage computes (the shards themselves are the dependency).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

RESTORE = "rerun `dvc repro shard` (or restore the tracked shards: `dvc checkout data/shards`)"


class InputGateError(ValueError):
    """An input of a stage failed validation or no longer matches what was written and validated."""


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise InputGateError(f"{path} not found: run the `{what}` stage first (`dvc repro {what}`)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputGateError(f"{path}: not valid JSON ({exc}): rerun `dvc repro {what}`") from exc
    if not isinstance(data, dict):
        raise InputGateError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def require_validation_passed(path: Path) -> dict[str, Any]:
    """The validation report, when it says the data passed; else an error naming the failed checks."""
    report = _read_json(path, "validate")
    if report.get("success") is not True:
        failed = report.get("failed") or []
        names = ", ".join(str(f) for f in failed[:8]) + (f" and {len(failed) - 8} more" if len(failed) > 8 else "")
        raise InputGateError(
            f"{path}: the data failed validation (success: {report.get('success')!r}"
            f"{'; failed checks: ' + names if names else ''}): refusing to use it. Fix the data and rerun "
            f"`dvc repro validate` (details: reports/data_docs/index.html)"
        )
    return report


def sha256_of(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def recorded_digests(shard_report: Path, split: str) -> dict[str, str]:
    """{tar file name: sha256} of one split as `reports/shard.json` records them."""
    report = _read_json(shard_report, "shard")
    digests = report.get("shard_sha256")
    if not isinstance(digests, dict) or not digests:
        raise InputGateError(f"{shard_report}: no `shard_sha256` digests recorded: rerun `dvc repro shard`")
    return {Path(k).name: str(v) for k, v in digests.items() if Path(k).parent.name == split}


def verify_shards(shard_dir: Path, shard_report: Path) -> int:
    """Check every tar of the split directory `shard_dir` (its name is the split) against the digests of
    `shard_report`; returns the number of shards checked."""
    want = recorded_digests(shard_report, shard_dir.name)
    have = sorted(shard_dir.glob("*.tar")) if shard_dir.is_dir() else []
    if not want:
        raise InputGateError(f"{shard_report}: records no `{shard_dir.name}` shards; {RESTORE}")
    for path in have:
        if path.name not in want:
            raise InputGateError(f"{path}: shard not listed in {shard_report} (added after `shard` ran?); {RESTORE}")
        actual = sha256_of(path)
        if actual != want[path.name]:
            raise InputGateError(
                f"{path}: sha256 {actual[:12]}... differs from {shard_report} ({want[path.name][:12]}...): the shard "
                f"changed after it was written (truncated or edited); {RESTORE}"
            )
    missing = sorted(set(want) - {p.name for p in have})
    if missing:
        raise InputGateError(f"{shard_dir / missing[0]}: listed in {shard_report} but missing; {RESTORE}")
    return len(have)
