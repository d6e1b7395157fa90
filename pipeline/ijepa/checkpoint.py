"""Full-state training checkpoints: atomic save, rotation, safe loading, compatibility, RNG state.

A checkpoint `models/checkpoints/ckpt-step{step:07d}.pt` holds everything an exact resume needs
(model = context/target encoders + predictor, optimizer, step, data-stream position, RNG states,
progress counters and the metric history) as tensors and plain Python types only, so it loads with
`torch.load(..., weights_only=True)`, and is written in a canonical form (`canonical`): the same state
gives the same bytes, also after a resume. It also stores the run's identity params and their
fingerprint: resuming under different params is refused with the list of what differs.

Integrity: the zip container torch writes carries no checksum that `torch.load` verifies (flipped bytes
inside a tensor record load silently), so every checkpoint has a digest file beside it,
`ckpt-step{step:07d}.pt.sha256` (`sha256sum` format: `sha256sum -c` checks it too), computed from the bytes
as they were written. `load_checkpoint` verifies it before unpickling anything; a checkpoint that fails
(or has no digest) is refused with an error naming it, and the run stops: it does not fall back to the
older rotated checkpoint on its own, since bytes that changed on disk after they were written point at
storage or tampering that a person should look at. The error names the previous checkpoint; moving the
bad one away resumes from it. A save that runs out of space raises `NoSpaceError` naming the file and
leaves no temp file; the checkpoints already there are untouched (rotation happens after a good save).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import sys
from collections import OrderedDict
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from pipeline.atomic import replacing

FORMAT = "ijepa-checkpoint/1"
_NAME = re.compile(r"^ckpt-step(\d{7,})\.pt$")
_TEMP = re.compile(r"^\.ckpt-step\d{7,}\.pt(\.sha256)?\.tmp-\d+$")
DIGEST_SUFFIX = ".sha256"
CHUNK = 1 << 20


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


def digest_path(path: Path) -> Path:
    """The digest file of a checkpoint: `<name>.sha256` beside it."""
    return path.with_name(path.name + DIGEST_SUFFIX)


class _HashingWriter:
    """File wrapper that hashes every byte written through it (torch.save writes sequentially)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh, self.sha256 = fh, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def canonical(obj: Any) -> Any:
    """`obj` rebuilt with every string interned (containers keep their type and attributes, tensors are
    untouched). Pickle writes a string once per *object*, so strings read back from a checkpoint (a resumed
    run's optimizer keys, logged rows) and this process's own would otherwise serialise differently: with
    every equal string one object, a resumed run writes the same checkpoint bytes as an uninterrupted one."""
    if type(obj) in (dict, OrderedDict):
        out = type(obj)((canonical(k), canonical(v)) for k, v in obj.items())
        if (meta := getattr(obj, "_metadata", None)) is not None:  # nn.Module.state_dict() versions
            out._metadata = canonical(meta)  # type: ignore[attr-defined]
        return out
    if type(obj) in (list, tuple):
        return type(obj)(canonical(v) for v in obj)
    return sys.intern(obj) if type(obj) is str else obj


def save_checkpoint(directory: Path, state: dict[str, Any], keep: int = 2) -> Path:
    """Write `state` and its digest atomically (temp files, fsync, os.replace: the digest first, so a
    checkpoint never exists without its digest), then keep only the newest `keep`. Out of space:
    `NoSpaceError` naming the checkpoint, temp files removed, older checkpoints untouched."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.iterdir():  # temp files of a killed earlier attempt
        if _TEMP.match(stale.name):
            stale.unlink(missing_ok=True)
    path = directory / checkpoint_name(int(state["step"]))
    digest = digest_path(path)
    tmp = directory / f".{path.name}.tmp-{os.getpid()}"
    tmp_digest = directory / f".{digest.name}.tmp-{os.getpid()}"
    with replacing(path, tmp, tmp_digest):
        with open(tmp, "wb") as fh:
            writer = _HashingWriter(fh)
            torch.save(canonical({"format": FORMAT, **state}), writer)
            fh.flush()
            os.fsync(fh.fileno())
        with open(tmp_digest, "w") as fh:
            fh.write(f"{writer.sha256.hexdigest()}  {path.name}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_digest, digest)
        os.replace(tmp, path)
        _fsync_dir(directory)
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
        digest_path(old).unlink(missing_ok=True)
    names = {p.name for p in list_checkpoints(directory)}
    for orphan in directory.glob(f"ckpt-step*.pt{DIGEST_SUFFIX}"):  # a save killed between its two renames
        if orphan.name[: -len(DIGEST_SUFFIX)] not in names:
            orphan.unlink(missing_ok=True)
    return path


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            sha.update(block)
    return sha.hexdigest()


def _fallback_hint(path: Path) -> str:
    older = [p for p in list_checkpoints(path.parent) if p.name < path.name]
    resume = f"Move it away to resume from the previous checkpoint {older[-1].name}" if older else "Delete it"
    return f"{resume}, or set train.resume=false to start over."


def verify_checkpoint(path: Path) -> None:
    """Refuse a checkpoint whose bytes differ from the digest recorded when it was written (or that has none)."""
    digest = digest_path(path)
    if not digest.is_file():
        raise CheckpointError(
            f"{path}: no digest file {digest.name} beside it, so its integrity cannot be checked (written before "
            f"checkpoints carried digests, or not by this pipeline). Nothing was loaded. {_fallback_hint(path)}"
        )
    recorded = digest.read_text().split()
    if not recorded or not re.fullmatch(r"[0-9a-f]{64}", recorded[0]):
        raise CheckpointError(f"{digest}: not a sha256 digest line. Nothing was loaded. {_fallback_hint(path)}")
    actual = file_sha256(path)
    if actual != recorded[0]:
        raise CheckpointError(
            f"{path}: checkpoint is corrupt: its sha256 {actual[:16]}... differs from the one recorded when it was "
            f"written ({recorded[0][:16]}... in {digest.name}). Nothing was loaded. {_fallback_hint(path)}"
        )


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Verify the digest, then load safely (`weights_only=True`); any failure names the file."""
    verify_checkpoint(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(
            f"{path}: checkpoint is corrupt or unreadable ({type(exc).__name__}: {exc}). {_fallback_hint(path)}"
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


def seed_all(seed: int) -> None:
    """Seed the Python, numpy and torch (CPU + CUDA) global RNGs, so the states a checkpoint stores
    depend on the run's seed only, not on the process that happened to run it."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
