"""`ijepa flow serve` against a real local Prefect server: scheduled deployments, triggered on demand."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, project_env
from tests.mini_project import make_mini_project
from tests.prefect_server import PrefectServer, ensure_server


@pytest.fixture(scope="session")
def prefect_server() -> PrefectServer:
    return ensure_server()


def _deployment(env: dict[str, str], name: str, timeout: float = 120) -> object:
    """Wait until the served deployment is registered on the server; return it."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout
    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as c:
        while True:
            try:
                return c.read_deployment_by_name(name)
            except Exception:  # noqa: BLE001 - ObjectNotFound until serve registered it
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)


def test_served_nightly_deployment_runs_when_triggered(prefect_server: PrefectServer, tmp_path: Path) -> None:
    project = make_mini_project(tmp_path / "mini")
    env = {**project_env(), **prefect_server.env()}
    ijepa = str(Path(sys.executable).parent / "ijepa")
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed in finally
    serve = subprocess.Popen([ijepa, "flow", "serve", "--project", str(project)], cwd=ROOT, env=env,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        nightly = _deployment(env, "ijepa-pipeline/nightly-retrain")
        assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]  # params flow.cron
        assert nightly.parameters["project"] == str(project)
        sweep = _deployment(env, "ijepa-sweep/sweep")
        assert sweep.schedules == []  # on demand only
        run = subprocess.run(
            [str(Path(sys.executable).parent / "prefect"), "deployment", "run", "ijepa-pipeline/nightly-retrain",
             "--watch", "--watch-timeout", "240"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "Completed" in run.stdout
        assert (project / "dvc.lock").exists() and (project / "reports" / "eval_linear.json").exists()
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGTERM)
            try:
                serve.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
                serve.wait()
        log.close()


def test_serve_without_a_server_says_how_to_start_one(tmp_path: Path) -> None:
    project = make_mini_project(tmp_path / "mini", commit=False)
    env = {k: v for k, v in project_env().items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    proc = subprocess.run([str(Path(sys.executable).parent / "ijepa"), "flow", "serve", "--project", str(project)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1
    assert "prefect server start --host 127.0.0.1" in proc.stderr
