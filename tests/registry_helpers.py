"""One real tiny pipeline run (`dvc repro` of every stage, committed) shared by the registry and lineage
tests: built once per session, then copied per test module so each module may tag and tamper freely."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from pipeline.cli import app
from tests.conftest import dvc, make_project, project_env, run
from tests.fakes import fake_fashion_mnist

ARTIFACT = "ijepa-encoder"
# Smaller than TINY (300 + 100 images, one low-shot setting, one C) and a gate the tiny encoder passes; the
# raw-pixel margin is enabled (at -1) so every gate check is exercised.
OVERRIDES: dict = {
    "data": {"val_size": 50, "shard_max_count": 100},
    "validate": {"expected_sizes": {"train": 250, "val": 50, "test": 100}},
    "train": {"snapshots": 1, "batch_size": 50},
    "eval": {"lowshot_k": [5], "lowshot_seeds": 1, "lowshot_percent": None, "c_grid": [1.0], "knn_k": [5],
             "max_train": 300, "snapshot_max_images": 60},
    "register": {"min_linear_top1": 0.1, "margin_metric": "lowshot.k5.mean", "min_margin_over_random": -1.0,
                 "min_margin_over_raw": -1.0},
}  # fmt: skip
_BUILT: dict[str, Path] = {}


def pipeline_run(factory: pytest.TempPathFactory) -> Path:
    """The pristine project after `dvc repro` + `git commit` (built on first use in the session)."""
    if "root" not in _BUILT:
        base = factory.mktemp("registry-run")
        project = make_project(base / "project", fake_fashion_mnist(base / "fm", n_train=300, n_test=100), OVERRIDES)
        dvc(project, "repro")
        run(["git", "add", "-A"], project)
        run(["git", "commit", "-q", "-m", "tiny pipeline run"], project)
        _BUILT["root"] = project
    return _BUILT["root"]


def project_copy(factory: pytest.TempPathFactory, name: str) -> Path:
    """A private copy of the pristine run (git history and DVC cache included)."""
    dest = factory.mktemp(name) / "project"
    shutil.copytree(pipeline_run(factory), dest, symlinks=True)
    return dest


def ijepa(project: Path, *args: str, check: bool = True) -> Result:
    """Run the `ijepa` CLI in-process (typer's CliRunner) with `project` as the working directory."""
    runner = CliRunner(env={k: v for k, v in project_env().items() if k.startswith(("GIT_", "HF_", "DVC_"))})
    cwd = Path.cwd()
    os.chdir(project)
    try:
        result = runner.invoke(app, list(args))
    finally:
        os.chdir(cwd)
    if check and result.exit_code != 0:
        trace = "".join(traceback.format_exception(result.exception)) if result.exception else ""
        raise AssertionError(f"ijepa {' '.join(args)} exited {result.exit_code}\n{result.output}\n{trace}")
    return result


def ijepa_process(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the `ijepa` console entry point as its own process."""
    return run([sys.executable, "-c", "from pipeline.cli import main; main()", *args], project, check=check)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def flip_byte(path: Path, offset: int) -> bytes:
    """Flip one bit of the byte at `offset` (negative: from the end); returns the original bytes."""
    original = path.read_bytes()
    data = bytearray(original)
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    return original
