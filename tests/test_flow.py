"""The `ijepa-pipeline` flow on a three-stage mini project, against a real local Prefect server.

The server is started once per test process (tests/prefect_server.py: `prefect server start` on
127.0.0.1 and a free port, its own PREFECT_HOME) and stopped at exit.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, project_env
from tests.mini_project import git_commit, make_mini_project, set_param
from tests.prefect_server import PrefectServer


def task_runs(client: object, flow_run_id: object) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def statuses(summary: dict) -> dict[str, str]:
    return {s["stage"]: s["status"] for s in summary["stages"]}


def test_flow_runs_stages_in_order_then_cached_then_only_downstream(prefect_api: PrefectServer,
                                                                    tmp_path: Path) -> None:  # fmt: skip
    from prefect.artifacts import Artifact

    from flows.pipeline import ijepa_pipeline
    from pipeline.dag import descendants, stages_from_yaml, stages_reading_param

    project = make_mini_project(tmp_path / "mini")
    first = ijepa_pipeline(project=str(project))
    assert [s["stage"] for s in first["stages"]] == ["prepare", "train", "evaluate"]
    assert set(statuses(first).values()) == {"ran"}
    assert first["revision"]["git_commit"] and first["revision"]["dvc_lock_sha256"]

    state = ijepa_pipeline(project=str(project), return_state=True)
    assert state.is_completed()
    assert set(statuses(state.result()).values()) == {"cached"}
    report = Artifact.get("ijepa-pipeline-report")
    assert report is not None and "| train | cached |" in report.data
    assert "| linear.test_top1 | 0.9600 | 0.5000 | 0.3000 |" in report.data  # encoder vs baselines

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:  # the task states are named Cached on the server
        runs = task_runs(client, state.state_details.flow_run_id)
    names = {r.name: r.state.name for r in runs}
    assert names == {"prepare": "Cached", "train": "Cached", "evaluate": "Cached"}
    by_id = {r.id: r.name for r in runs}  # the run graph's edges are the stage graph's (wait_for)
    edges = {r.name: {by_id[i.id] for i in r.task_inputs.get("wait_for", [])} for r in runs}
    assert edges == {"prepare": set(), "train": {"prepare"}, "evaluate": {"train"}}

    set_param(project, "train", "lr", 0.02)  # one param: exactly the stages that read it and their descendants
    third = ijepa_pipeline(project=str(project))
    stages = stages_from_yaml(project / "dvc.yaml")
    expected = {n for s in stages_reading_param(stages, "train.lr") for n in {s, *descendants(stages, s)}}
    assert {n for n, st in statuses(third).items() if st == "ran"} == expected == {"train", "evaluate"}
    assert statuses(third)["prepare"] == "cached"

    up_to = ijepa_pipeline(project=str(project), target="train", force=True)
    assert statuses(up_to) == {"prepare": "ran", "train": "ran"}


def test_overrides_run_as_a_dvc_experiment(prefect_api: PrefectServer, tmp_path: Path) -> None:
    from flows.pipeline import ijepa_pipeline

    project = make_mini_project(tmp_path / "mini")
    ijepa_pipeline(project=str(project))
    git_commit(project, "baseline run")
    summary = ijepa_pipeline(project=str(project), overrides=["evaluate.k=4"], exp_name="k4")
    assert statuses(summary) == {"prepare": "cached", "train": "cached", "evaluate": "ran"}
    assert summary["revision"]["experiment"] == "k4"
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=project,
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert any(ref.endswith("/k4") for ref in refs.split())
    import dvc.api

    assert dvc.api.params_show(repo=str(project), rev="k4")["evaluate"]["k"] == 4
    assert "linear.val_top1" in dvc.api.read("reports/eval_linear.json", repo=str(project), rev="k4")


def test_broken_stage_fails_the_flow_with_its_own_message(prefect_api: PrefectServer, tmp_path: Path) -> None:
    from prefect.artifacts import Artifact

    from flows.pipeline import ijepa_pipeline

    project = make_mini_project(tmp_path / "mini")
    set_param(project, "train", "fail", True)
    state = ijepa_pipeline(project=str(project), return_state=True)
    assert state.is_failed()
    assert "stage 'train' failed" in state.message
    assert "train: error: deliberately broken (train.fail=true)" in state.message
    report = Artifact.get("ijepa-pipeline-report")
    assert report is not None and "failed** at `train`" in report.data and "| prepare | ran |" in report.data
    assert not (project / "reports" / "eval_linear.json").exists()  # nothing after the failure ran


def test_lock_keeps_a_second_flow_out(tmp_path: Path) -> None:
    from flows.dvc_runner import LockTimeout, ProjectLock

    project = make_mini_project(tmp_path / "mini", commit=False)
    holder = ProjectLock(project, 1.0).__enter__()
    try:
        start = time.monotonic()
        with pytest.raises(LockTimeout, match=f"pid {__import__('os').getpid()}"), ProjectLock(project, 0.5):
            pass
        assert time.monotonic() - start < 5
        released = threading.Timer(0.5, holder.__exit__)
        released.start()
        with ProjectLock(project, 10.0):  # waits until the holder lets go
            pass
    finally:
        holder.__exit__()


def test_cli_flow_run(prefect_server: PrefectServer, tmp_path: Path) -> None:
    project = make_mini_project(tmp_path / "mini")
    env = {**project_env(), **prefect_server.env()}
    ijepa = str(Path(sys.executable).parent / "ijepa")
    cmd = [ijepa, "flow", "run", "--project", str(project), "--target", "prepare"]
    main = subprocess.run([ijepa, "--help"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert main.returncode == 0 and "flow" in main.stdout
    first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.split()[:2] == ["prepare", "ran"]
    set_param(project, "train", "fail", True)
    broken = subprocess.run(cmd[:-2], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert broken.returncode == 1
    assert "error: stage 'train' failed" in broken.stderr and "deliberately broken" in broken.stderr


def test_stage_timeout_and_retries_come_from_params(prefect_api: PrefectServer, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client

    from flows.pipeline import ijepa_pipeline

    project = make_mini_project(tmp_path / "mini")
    set_param(project, "train", "sleep", 1.0)  # 4 steps x 1 s: longer than the timeout below
    set_param(project, "flow", "stages", {"train": {"timeout_s": 3, "retries": 1}})
    set_param(project, "flow", "retry_delay_s", 0)
    state = ijepa_pipeline(project=str(project), target="train", return_state=True)
    assert state.is_failed() and "stage 'train' timed out after 3 s and was killed" in state.message
    with get_client(sync_client=True) as client:
        runs = task_runs(client, state.state_details.flow_run_id)
    assert {r.name: r.run_count for r in runs} == {"prepare": 1, "train": 2}  # one retry
    assert not (project / "models" / "model.txt").exists()
