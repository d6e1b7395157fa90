"""The `register` stage's work: the quality gate (pipeline/registry/gate.py), then the registry entry and card.

`register_model` reads the encoder, every report and the `register` params, checks the gate and, when
it passes, writes `registry/entry.json` (everything needed to audit and reload the model: encoder
hashes, architecture, params, metrics, data and source identity) and `registry/model_card.md`, each
atomically and byte-identical for the same inputs; when and from which git commit the stage ran goes to
reports/timings/register.json (pipeline/timings.py: committed, not a DVC output). A failed gate
raises `GateFailed` naming every unmet threshold (observed vs required) and writes nothing and deletes
nothing: the entry and card already there (the last model that passed; both git-tracked, `cache: false`
and `persist: true` in dvc.yaml, so DVC does not delete them before the stage runs either) stay as they
were, and since the stage failed DVC does not record it in dvc.lock. They describe their own encoder
by sha256, so they can never pass for the new one (`ijepa registry register` and `ijepa lineage
--verify` compare the hashes).
Versions and stages of the registered encoder live in pipeline/registry/versions.py (gto tags); every
registered version stays readable from its tag whatever the workspace holds.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.atomic import write_text_atomic
from pipeline.config import RegisterParams
from pipeline.figures import card_figures
from pipeline.headline import STAGE_REPORTS
from pipeline.registry.card import model_card
from pipeline.registry.gate import GateCheck, GateFailed, evaluate_gate
from pipeline.registry.records import (
    View,
    hash_path,
    head_commit,
    is_dirty,
    load_yaml,
    lock_outs,
)
from pipeline.registry.source import source_identity
from pipeline.timings import write_timings

ENTRY_FORMAT = "ijepa-registry-entry/1"
ENTRY = Path("registry/entry.json")
RUN = Path("reports/timings/register.json")
CARD = Path("registry/model_card.md")
ENCODER = Path("models/encoder.safetensors")
ENCODER_META = Path("models/encoder.json")
REPORTS = STAGE_REPORTS
PARAM_SECTIONS = ("data", "model", "mask", "train", "eval")
SHARDS, MANIFEST = "data/shards", "data/manifest.csv"


class RegistryInputError(RuntimeError):
    """An input of the register stage (encoder, report) is missing or unreadable."""


def _read_json(root: Path, rel: Path, required: bool = True) -> dict | None:
    path = root / rel
    if not path.is_file():
        if required:
            raise RegistryInputError(f"{rel}: not found (run the upstream stages first: dvc repro)")
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RegistryInputError(f"{rel}: not valid JSON: {exc}") from exc


def _data_identity(lock: dict | None, shard: dict | None) -> dict[str, Any]:
    outs = lock_outs(lock)
    shard = shard or {}
    shards_out, manifest_out = outs.get(SHARDS, {}), outs.get(MANIFEST, {})
    return {
        "manifest": {"path": MANIFEST, "md5": manifest_out.get("md5"), "sha256": shard.get("manifest_sha256")},
        "shards": {
            "path": SHARDS,
            "dvc_md5": shards_out.get("md5"),
            "nfiles": shards_out.get("nfiles"),
            "bytes": shards_out.get("size"),
            "sha256": shard.get("shard_sha256") or {},
        },
        "count": shard.get("count"),
        "classes": shard.get("classes"),
        "lock_recorded": bool(outs),
    }


def build_entry(root: Path, params: RegisterParams, checks: list[GateCheck], params_path: Path) -> dict[str, Any]:
    """The registry entry (registry/entry.json) for the workspace under `root`."""
    reports = {name: _read_json(root, rel, required=name != "shard") for name, rel in REPORTS.items()}
    arch = _read_json(root, ENCODER_META)
    weights, meta = hash_path(root / ENCODER), hash_path(root / ENCODER_META)
    all_params = load_yaml(params_path.read_text()) or {}
    lock = View(root).read_yaml("dvc.lock")
    shard = reports["shard"] or {}
    source = shard.get("source")
    inputs = {rel.as_posix(): hash_path(root / rel).sha256 for rel in REPORTS.values() if (root / rel).is_file()}
    return {
        "format": ENTRY_FORMAT,
        "artifact": params.artifact,
        "encoder": {
            "path": ENCODER.as_posix(),
            "sha256": weights.sha256,
            "md5": weights.md5,
            "size": weights.size,
            "meta_path": ENCODER_META.as_posix(),
            "meta_sha256": meta.sha256,
        },
        "architecture": arch,
        "params": {s: all_params.get(s) for s in PARAM_SECTIONS},
        "register_params": params.model_dump(),
        "gate": {
            "passed": all(c.passed for c in checks),
            "enforced": params.enforce_gate,
            "checks": [asdict(c) for c in checks],
        },
        "metrics": {k: reports[k] for k in ("eval_linear", "eval_lowshot", "pretrain")},
        "validation": {k: v for k, v in (reports["validation"] or {}).items() if not isinstance(v, (dict, list))},
        "data": _data_identity(lock, shard),
        "source": source_identity(source, shard.get("root", ""), params.source_hash_max_bytes) if source else None,
        "inputs": inputs,
    }


def register_model(
    root: Path | str = ".", params: RegisterParams | None = None, params_path: Path | str = "params.yaml"
) -> dict[str, Any]:
    """Run the gate; on success write card + entry atomically and return the entry. On any failure
    (gate, missing input, full disk) nothing under registry/ is written or removed."""
    root, params_path = Path(root), Path(params_path)
    params = params or RegisterParams()
    for rel in (ENCODER, ENCODER_META):
        if not (root / rel).is_file():
            raise RegistryInputError(f"{rel}: not found (run the pretrain stage first: dvc repro pretrain)")
    linear, lowshot = (_read_json(root, REPORTS[name]) or {} for name in ("eval_linear", "eval_lowshot"))
    metrics = {**linear, **lowshot}
    validation = _read_json(root, REPORTS["validation"], required=params.require_validation)
    checks = evaluate_gate(params, metrics, validation)
    if params.enforce_gate and not all(c.passed for c in checks):
        raise GateFailed(checks)
    entry = build_entry(root, params, checks, params_path if params_path.is_absolute() else root / params_path)
    card = model_card(entry, card_figures(root, CARD.parent))
    write_text_atomic(root / CARD, card)
    write_text_atomic(root / ENTRY, json.dumps(entry, indent=2) + "\n")
    write_timings(root / RUN, run_record(root))
    return entry


def run_record(root: Path) -> dict[str, Any]:
    """When and from which commit the stage ran (reports/timings/register.json; differs on every run)."""
    return {
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git": {
            "commit": head_commit(root),
            "dirty": is_dirty(root),
            "note": "commit the run started from; the registry tag points at the commit holding the entry",
        },
    }
