"""DVC stage `register`: quality gate -> registry/entry.json + registry/model_card.md.

Reads models/encoder.safetensors + encoder.json, reports/*.json, dvc.lock (upstream hashes) and params
`register` (thresholds) plus `data`/`model`/`mask`/`train`/`eval` (recorded in the entry). A failed gate
exits 1, prints every unmet threshold (observed vs required) and writes nothing, deletes nothing (the
entry and card of the last model that passed stay; the stage is not recorded in dvc.lock).
Versions and stages: `ijepa registry register` / `promote` (gto tags) after committing the run.
"""

from __future__ import annotations

import sys

from pipeline.atomic import NoSpaceError
from pipeline.config import ParamsError, RegisterParams, load_section
from pipeline.registry.entry import RegistryInputError, register_model
from pipeline.registry.gate import GateFailed
from pipeline.registry.records import RecordError


def main(params_path: str = "params.yaml") -> int:
    try:
        params = load_section("register", params_path, RegisterParams)
        entry = register_model(".", params, params_path)
    except GateFailed as exc:
        print(f"register: {exc}", file=sys.stderr)
        return 1
    except (ParamsError, RegistryInputError, RecordError, NoSpaceError) as exc:
        print(f"register: error: {exc}", file=sys.stderr)
        return 1
    gate = entry["gate"]
    for check in gate["checks"]:
        print(f"register: gate {check['name']}: {check['observed']} (required {check['required']})")
    verdict = "passed" if gate["passed"] else "FAILED (recorded, enforce_gate=false)"
    print(
        f"register: gate {verdict}; {entry['artifact']} sha256 {entry['encoder']['sha256'][:16]} "
        f"({entry['encoder']['size']} bytes) -> registry/entry.json, registry/model_card.md"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
