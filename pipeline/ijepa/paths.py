"""Where a pretraining run reads and writes: the stage's file contracts (DESIGN.md §3) as one record."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.data import remote
from pipeline.timings import timings_path


@dataclass(frozen=True)
class RunPaths:
    """Where the stage reads and writes (DESIGN.md §3 contracts), relative to `root`."""

    shards: Path | str  # a directory, or a URL in object storage (IJEPA_SHARD_URL)
    validation: Path
    encoder: Path
    snapshots: Path
    checkpoints: Path
    report: Path
    live: Path
    shard_report: Path | None = None  # digests the train shards must match (None: not checked)

    @classmethod
    def under(cls, root: Path | str = ".") -> RunPaths:
        """The contract paths under `root`; the train shards from `IJEPA_SHARD_URL` when it is set."""
        r = Path(root)
        return cls(
            remote.join(remote.shard_root(r / "data/shards"), "train"),
            r / "reports/validation.json",
            r / "models/encoder.safetensors",
            r / "models/snapshots",
            r / "models/checkpoints",
            r / "reports/pretrain.json",
            r / "reports/dvclive",
            r / "reports/shard.json",
        )

    @property
    def timings(self) -> Path:
        """The run's wall-clock numbers (pipeline/ijepa/clock.py), beside the report: reports/timings/pretrain.json."""
        return timings_path(self.report)

    @property
    def snapshot_staging(self) -> Path:
        """Snapshots are written here first (persisted with the checkpoints, survive a DVC re-run)."""
        return self.checkpoints / "snapshots"
