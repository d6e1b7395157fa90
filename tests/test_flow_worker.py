"""`ijepa flow deploy` to a `process` work pool; a real `prefect worker start` process runs a triggered
deployment of the mini project (real local Prefect server)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT, project_env
from tests.mini_project import make_mini_project
from tests.prefect_server import PrefectServer

BIN = Path(sys.executable).parent


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_worker_runs_the_deployed_pipeline(prefect_server: PrefectServer, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    project = make_mini_project(tmp_path / "mini")
    pool = f"ijepa-test-{uuid.uuid4().hex[:8]}"
    env = {**project_env(), **prefect_server.env(), "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_WORKER_PREFETCH_SECONDS": "1"}  # fmt: skip
    dep = subprocess.run([str(BIN / "ijepa"), "flow", "deploy", "--project", str(project), "--pool", pool],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert dep.returncode == 0, dep.stdout[-2000:] + dep.stderr[-3000:]
    assert f"prefect worker start --pool {pool}" in dep.stdout

    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}), get_client(sync_client=True) as c:
        assert c.read_work_pool(pool).type == "process"  # created by `flow deploy`
        nightly = c.read_deployment_by_name("ijepa-pipeline/nightly-retrain")
        sweep = c.read_deployment_by_name("ijepa-sweep/sweep")
    assert nightly.work_pool_name == pool and sweep.work_pool_name == pool
    assert nightly.parameters["project"] == str(project) and [s.schedule.cron for s in nightly.schedules] == [
        "0 2 * * *"
    ]
    assert nightly.entrypoint == "flows/pipeline.py:ijepa_pipeline"

    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - closed in finally
    worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"],
                              cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)  # fmt: skip
    try:
        run = subprocess.run(
            [str(BIN / "prefect"), "deployment", "run", "ijepa-pipeline/nightly-retrain", "--param",
             "target=train", "--watch", "--watch-timeout", "300"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=360,
        )  # fmt: skip
        worker_log = (tmp_path / "worker.log").read_text()
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:] + worker_log[-3000:]
        assert "Completed" in run.stdout
    finally:
        _stop(worker)
        log.close()
    assert (project / "models" / "model.txt").exists()  # stages up to `train` ran, in the worker's flow run
    assert not (project / "reports" / "eval_linear.json").exists()
    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}), get_client(sync_client=True) as c:
        runs = c.read_flow_runs()
    # one run went through the pool (the cron schedule adds future Scheduled ones), and it completed
    [flow_run] = [r for r in runs if r.work_pool_name == pool and not r.state.is_scheduled()]
    assert flow_run.deployment_id == nightly.id and flow_run.state.is_completed()
    assert str(flow_run.id) in (tmp_path / "worker.log").read_text()  # the worker process picked it up


def test_deploy_without_a_server_says_how_to_start_one(tmp_path: Path) -> None:
    project = make_mini_project(tmp_path / "mini", commit=False)
    env = {k: v for k, v in project_env().items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    proc = subprocess.run([str(BIN / "ijepa"), "flow", "deploy", "--project", str(project)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1
    assert "deploying needs a Prefect server" in proc.stderr and "prefect server start" in proc.stderr
