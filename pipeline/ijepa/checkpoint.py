"""Full-state training checkpoints: atomic save, rotation, safe loading, compatibility, RNG state.

A checkpoint `models/checkpoints/ckpt-step{step:07d}.pt` holds everything an exact resume needs
(model = context/target encoders + predictor, optimizer, step, data-stream position, RNG states,
progress counters and the metric history) as tensors and plain Python types only, so it loads with
`torch.load(..., weights_only=True)`. It also stores the run's identity params and their
fingerprint: resuming under different params is refused with the list of what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "ijepa-checkpoint/1"
_NAME = re.compile(r"^ckpt-step(\d{7,})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: unreadable, of another format, or from a different run."""


def fingerprint(identity: dict[str, Any]) -> str:
    """Stable sha256 of the JSON of the params that define a run (key order does not matter)."""
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def checkpoint_name(step: int) -> str:
    return f"ckpt-step{step:07d}.pt"


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files of `directory`, oldest step first (temp files and strangers ignored)."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(directory: Path, state: dict[str, Any], keep: int = 2) -> Path:
    """Write `state` atomically (temp file, fsync, os.replace) and keep only the newest `keep`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / checkpoint_name(int(state["step"]))
    tmp = directory / f".{path.name}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        torch.save({"format": FORMAT, **state}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load one checkpoint safely (`weights_only=True`); any failure names the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(
            f"{path}: checkpoint is corrupt or unreadable ({type(exc).__name__}: {exc}). Delete it to "
            f"resume from an older checkpoint in {path.parent}, or set train.resume=false to start over."
        ) from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not an {FORMAT} checkpoint (format {got!r})")
    return state


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def param_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable `key: checkpoint X, now Y` lines for every differing (flattened) key."""
    a, b = _flatten(json.loads(json.dumps(saved, default=str))), _flatten(json.loads(json.dumps(current, default=str)))
    return [
        f"{k}: checkpoint {a.get(k, '<absent>')!r}, now {b.get(k, '<absent>')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k, "<absent>") != b.get(k, "<absent>")
    ]


def incompatibility(path: Path, state: dict[str, Any], identity: dict[str, Any]) -> str | None:
    """None when `state` was written by a run with these identity params, else the explanation."""
    if state.get("fingerprint") == fingerprint(identity):
        return None
    diff = param_diff(state.get("identity", {}), identity) or ["(fingerprint differs)"]
    return f"{path}: checkpoint was written by a run with different params/architecture/data:\n  " + "\n  ".join(diff)


def clear_directory(directory: Path) -> None:
    """Remove checkpoints, temp files and staged snapshots (a deliberate fresh start)."""
    if directory.is_dir():
        for p in directory.iterdir():
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU + CUDA) RNG states as tensors / plain types."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured (CUDA only when present on both sides)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["mt"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
