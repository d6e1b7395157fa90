"""Shared fixtures: a tiny, real copy of the project (git + DVC) on generated data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.fakes import fake_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)
COPY = ["dvc.yaml", "params.yaml", ".gitignore", ".dvcignore", "pipeline", "stages", "flows", "configs"]

# Overrides that make every stage run in seconds on the fake dataset (600 train / 200 test images).
TINY: dict = {
    "data": {"val_size": 100, "shard_max_count": 150},
    "validate": {"expected_sizes": {"train": 500, "val": 100, "test": 200}, "size_tolerance": 0.05},
    "model": {"embed_dim": 32, "depth": 2, "num_heads": 2, "pred_embed_dim": 16, "pred_depth": 1, "pred_num_heads": 2},
    "train": {
        "epochs": 1,
        "min_steps": None,
        "batch_size": 50,
        "num_workers": 0,
        "checkpoint_every": 5,
        "snapshots": 2,
        "log_every": 2,
    },
    "eval": {"batch_size": 100, "lowshot_k": [1, 5], "lowshot_seeds": 2, "knn_k": [5, 20], "c_grid": [0.1, 1.0]},
    "register": {"margin_metric": "lowshot.k5.mean", "min_effective_rank": None},  # tiny encoders: test_collapse_gate
}


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def project_env() -> dict[str, str]:
    """Environment for subprocesses: the venv first on PATH, offline, no telemetry."""
    env = dict(os.environ)
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    env.update(
        {
            "DVC_NO_ANALYTICS": "1",
            "HF_HUB_OFFLINE": "1",
            "DO_NOT_TRACK": "1",
            "PYTHONPATH": str(ROOT),
            "GIT_AUTHOR_NAME": "test",
            "GIT_AUTHOR_EMAIL": "test@example.com",
            "GIT_COMMITTER_NAME": "test",
            "GIT_COMMITTER_EMAIL": "test@example.com",
        }
    )
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a command in the project copy, capturing output; on failure show it."""
    proc = subprocess.run(cmd, cwd=cwd, env=project_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def dvc(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], project, check=check)


def set_params(project: Path, overrides: dict) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump(deep_merge(params, overrides), sort_keys=False))


def make_project(dest: Path, data_root: Path, overrides: dict | None = None) -> Path:
    """Copy the project into `dest`, point it at `data_root`, apply TINY + overrides, git/dvc init."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    set_params(dest, deep_merge(deep_merge(TINY, {"data": {"root": str(data_root)}}), overrides or {}))
    run(["git", "init", "-q", "-b", "main"], dest)
    run([sys.executable, "-m", "dvc", "init", "-q"], dest)
    run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "tiny project"], dest)
    return dest


@pytest.fixture(scope="session")
def fake_fmnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture
def tiny_project(tmp_path: Path, fake_fmnist: Path) -> Path:
    """A fresh git+DVC copy of the project with TINY params on the fake Fashion-MNIST."""
    return make_project(tmp_path / "project", fake_fmnist)


@pytest.fixture(scope="session")
def prefect_server():  # noqa: ANN201 - tests.prefect_server.PrefectServer
    """One real `prefect server start` per test process (tests/prefect_server.py), stopped at exit."""
    from tests.prefect_server import ensure_server

    return ensure_server()


@pytest.fixture
def prefect_api(prefect_server) -> Iterator:  # noqa: ANN001
    """Client settings of this process pointed at the test server (even if prefect was imported before)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url, PREFECT_HOME: prefect_server.home}):
        yield prefect_server


PROBE_OUTCOMES: dict[str, list[str]] = {}  # fault probe -> outcomes of its marked tests (tests/test_faults.py)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Record the outcome of every test marked `@pytest.mark.probe(name)` (setup failures and skips too)."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" or report.outcome != "passed":
        for marker in item.iter_markers("probe"):
            PROBE_OUTCOMES.setdefault(marker.args[0], []).append(report.outcome)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One verdict line per fault probe of issue 14, when any probe test ran."""
    if PROBE_OUTCOMES:
        from tests.test_faults import verdicts

        terminalreporter.section("fault probes")
        for line in verdicts(PROBE_OUTCOMES):
            terminalreporter.write_line(line)
