"""Pure helpers of the hyper-parameter sweep: search space -> Optuna suggestions -> `dvc exp run -S`.

No Prefect, no subprocesses: flows/sweep.py does the orchestration. Values that Optuna cannot store
as categorical choices (lists such as `mask.target_scale: [0.15, 0.2]`) are offered to it as their
JSON text and decoded back, so the study shows readable choices.
"""

from __future__ import annotations

import json
import math
import socket
import zlib
from collections.abc import Mapping
from typing import Any, Protocol

from pipeline.config import SpaceParam

_PRIMITIVE = (type(None), bool, int, float, str)


class Suggester(Protocol):
    """The part of `optuna.trial.Trial` used here."""

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...  # fmt: skip

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


def _encodable(choices: list[Any]) -> bool:
    return all(isinstance(c, _PRIMITIVE) for c in choices)


def suggest(trial: Suggester, space: Mapping[str, SpaceParam]) -> dict[str, Any]:
    """Draw one value per dotted params key (the key is also the Optuna parameter name)."""
    values: dict[str, Any] = {}
    for key, dim in space.items():
        if dim.type == "float":
            assert dim.low is not None and dim.high is not None
            values[key] = trial.suggest_float(key, float(dim.low), float(dim.high), step=dim.step, log=dim.log)
        elif dim.type == "int":
            assert dim.low is not None and dim.high is not None
            step = int(dim.step) if dim.step else 1
            values[key] = trial.suggest_int(key, int(dim.low), int(dim.high), step=step, log=dim.log)
        else:
            choices = list(dim.choices or [])
            if _encodable(choices):
                values[key] = trial.suggest_categorical(key, choices)
            else:
                values[key] = json.loads(trial.suggest_categorical(key, [json.dumps(c) for c in choices]))
    return values


def decode_params(params: Mapping[str, Any], space: Mapping[str, SpaceParam]) -> dict[str, Any]:
    """Optuna's stored params (JSON text for list choices) back to params.yaml values."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        dim = space.get(key)
        if dim is not None and dim.type == "categorical" and not _encodable(list(dim.choices or [])):
            value = json.loads(value)
        out[key] = value
    return out


def format_value(value: Any) -> str:
    """A value in Hydra override syntax (what `dvc exp run -S key=value` parses)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot pass non-finite value {value!r} as a param")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"unsupported param value {value!r}")


def to_overrides(values: Mapping[str, Any]) -> list[str]:
    """`key=value` strings for `dvc exp run -S` (one per key, in order)."""
    return [f"{key}={format_value(value)}" for key, value in values.items()]


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested report dicts -> dotted keys (already-flat keys such as `linear.test_top1` stay as they are)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def metric(report: Mapping[str, Any], key: str) -> float:
    """A finite float metric from a (flat or nested) report; KeyError/ValueError name what is wrong."""
    flat = flatten(report)
    if key not in flat:
        raise KeyError(f"metric {key!r} not in report (keys: {', '.join(sorted(flat)[:12])} ...)")
    value = flat[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"metric {key!r} is {value!r}, not a finite number")
    return float(value)


def read_curve(text: str, column: str) -> list[tuple[int, float]]:
    """(step, value) rows of a dvclive-style TSV (`step<TAB>...<TAB>column`); partial last line ignored."""
    lines = text.splitlines()
    if not lines:
        return []
    header = lines[0].split("\t")
    if column not in header or "step" not in header:
        return []
    si, vi = header.index("step"), header.index(column)
    rows = []
    complete = lines[1:] if text.endswith("\n") else lines[1:-1]
    for line in complete:
        cells = line.split("\t")
        try:
            step, value = int(float(cells[si])), float(cells[vi])
        except (IndexError, ValueError):
            continue
        if math.isfinite(value):
            rows.append((step, value))
    return rows


def display_storage(url: str) -> str:
    """The storage URL for logs and artifacts, with any password replaced by `***`."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def worker_seed(seed: int, workspace: str, shared: bool) -> int:
    """The TPE seed of one sweep worker. A study in a storage of its own (the default SQLite file)
    keeps `seed` as it is; workers sharing a study each get `seed` mixed with their host and
    checkout, so two workspaces never draw the same sequence (equal seeds would propose the same
    startup trials in every worker)."""
    if not shared:
        return seed
    return (seed * 1_000_003 + zlib.crc32(f"{socket.gethostname()}:{workspace}".encode())) % 2**31
