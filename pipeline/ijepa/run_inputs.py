"""What a pretraining run reads besides its params, checked before anything trains: the validation
verdict and the input normalisation from the `validate` report, the train shards' digests against the
`shard` report (pipeline/data/integrity.py), the number of training samples in the shards, and the run
identity (params + data fingerprint) that decides whether a checkpoint may be resumed."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

from pipeline.config import MaskParams, ModelParams, TrainParams
from pipeline.data import remote
from pipeline.data.integrity import InputGateError, require_validation_passed, verify_shards
from pipeline.data.loader import list_shards
from pipeline.data.tario import member_names

# train keys that do not change what is computed: excluded from the resume fingerprint
VOLATILE_TRAIN_KEYS = {"log_every", "checkpoint_every", "resume", "compile", "device", "divergence_factor"}


class ShardReadError(ValueError):
    """A shard cannot be read (truncated, damaged); the message names it."""


def read_normalization(path: Path) -> dict[str, list[float]]:
    """`normalization` of reports/validation.json; a clear error when the file or key is missing."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the `validate` stage first (`dvc repro validate`)")
    norm = json.loads(path.read_text()).get("normalization")
    if not isinstance(norm, dict) or not norm.get("mean") or not norm.get("std"):
        raise KeyError(f"{path} has no usable `normalization` {{'mean': [...], 'std': [...]}} (got {norm!r})")
    return {"mean": [float(v) for v in norm["mean"]], "std": [float(v) for v in norm["std"]]}


def count_samples(shard_dir: Path | str) -> int:
    """Number of samples (`.cls` members) in the tar shards of one split (a directory or a URL); a
    damaged shard is named."""
    total = 0
    for url in list_shards(shard_dir):
        try:
            if remote.is_url(url):  # headers only: the store is read with range requests, bodies skipped
                with remote.open_url(url) as fh:
                    total += sum(1 for name in member_names(url, fh) if name.endswith(".cls"))
            else:
                total += sum(1 for name in member_names(url) if name.endswith(".cls"))
        except (tarfile.TarError, EOFError, OSError) as exc:
            detail = str(exc).removeprefix(f"{url}: ")
            raise ShardReadError(f"{url}: unreadable shard ({detail}); rerun `dvc repro shard`") from exc
    return total


def checked_inputs(
    validation: Path, shards: Path | str, shard_report: Path | None
) -> tuple[dict[str, list[float]], int]:
    """The normalisation and the number of training samples, once the inputs passed the stage-level gate:
    validation succeeded, the train shards match the digests of `shard_report` (skipped when None), and
    they hold the number of samples that validation counted. Shards read from object storage (a URL) are
    not digest-checked here (that would download them): publish them from a validated checkout."""
    if not validation.is_file():
        raise FileNotFoundError(f"{validation} not found: run the `validate` stage first (`dvc repro validate`)")
    report = require_validation_passed(validation)
    if shard_report is not None and not remote.is_url(str(shards)):
        verify_shards(Path(shards), shard_report)
    n_train = count_samples(shards)
    validated = (report.get("count") or {}).get(str(shards).rstrip("/").rsplit("/", 1)[-1])
    if isinstance(validated, int) and validated != n_train:
        raise InputGateError(
            f"{shards}: holds {n_train} samples but {validation} validated {validated}: the shards changed "
            f"after validation; rerun `dvc repro validate`"
        )
    return read_normalization(validation), n_train


def run_identity(
    model_p: ModelParams, mask_p: MaskParams, train_p: TrainParams, norm: dict, shards: Path | str, world: int
) -> dict[str, Any]:
    """What defines a run: checkpoints of another identity cannot be resumed."""
    train = {k: v for k, v in train_p.model_dump(mode="json").items() if k not in VOLATILE_TRAIN_KEYS}
    if train.get("data_parts") is None:  # unset = one part per process, as before the field: old checkpoints fit
        train.pop("data_parts", None)
    files = [[Path(u).name, remote.size(u)] for u in list_shards(shards)]
    return {
        "model": model_p.model_dump(mode="json"),
        "mask": mask_p.model_dump(mode="json"),
        "train": train,
        "data": {"shards": files, "normalization": norm},
        "world_size": world,
    }
