"""Param presets (configs/*.yaml): partial params files turned into `dvc exp run -S` overrides.

A preset has the shape of params.yaml but only the keys it changes. `preset_overrides` validates it
against the schema (merged over params.yaml) and flattens it to `section.key=value` strings:

    dvc exp run $(python -m pipeline.ijepa.presets configs/long.yaml)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import SECTIONS, ParamsError, parse_section, read_params_file


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict) and value:  # nested keys: dvc -S merges `a.b.c=v` into the mapping
        return [item for k, v in value.items() for item in _flatten(f"{prefix}.{k}", v)]
    return [(prefix, value)]


def _yaml_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    text = text.removesuffix("\n...").strip()
    if " " in text.replace(", ", ","):
        raise ParamsError(f"value {value!r} contains spaces: pass it to `dvc exp run -S` by hand")
    return text.replace(", ", ",")


def preset_overrides(preset: Path | str, params: Path | str = "params.yaml") -> list[str]:
    """Validated `section.key=value` overrides of one preset (errors name the preset file)."""
    preset = Path(preset)
    over = yaml.safe_load(preset.read_text()) or {}
    if not isinstance(over, dict) or not set(over) <= set(SECTIONS):
        raise ParamsError(f"{preset}: expected a mapping of params sections {sorted(SECTIONS)}")
    merged = _merge(read_params_file(params), over)
    for name in over:
        parse_section(name, merged.get(name), str(preset))
    return [f"{key}={_yaml_value(v)}" for name, section in over.items() for key, v in _flatten(name, section)]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m pipeline.ijepa.presets PRESET.yaml  (prints dvc exp run -S arguments)", file=sys.stderr)
        return 2
    try:
        print(" ".join(f"-S {o}" for o in preset_overrides(argv[0])))
    except (OSError, ParamsError, yaml.YAMLError) as exc:
        print(f"presets: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
