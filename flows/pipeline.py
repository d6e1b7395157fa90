"""Prefect flow `ijepa-pipeline`: one task per DVC stage, in the order DVC's stage graph gives.

The stage list comes from the repository itself (`Repo.index.stages` -> pipeline/dag.py), so a stage
added to dvc.yaml becomes a task without code changes. Each task reproduces exactly its stage through
DVC: an up-to-date stage is skipped and reported as `Cached` (task state name, log line, artifact); a
changed one runs as `dvc repro --single-item STAGE` with its output streamed into the Prefect log. A
failing stage fails its task and the flow with the stage's own error message. Tasks run one after the
other under a repository lock (flows/dvc_runner.py), so no two DVC commands touch the repo at once; each
waits for (`wait_for`) the tasks of the stages it needs, so the run graph shows the stage graph.
Param overrides are written like `dvc exp run -S` writes them and the result is saved as a DVC
experiment (`dvc exp save`), so it shows in `dvc exp show`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from flows.dvc_runner import (
    DvcSession,
    ProjectLock,
    StageFailed,
    apply_param_overrides,
    exp_save,
    find_root,
    reproduce_stage,
)
from flows.report import figures_markdown, links, pipeline_markdown
from pipeline.config import FlowParams, load_section
from pipeline.dag import topological_order, upstream_map

_SESSIONS: dict[Path, DvcSession] = {}
_SESSIONS_LOCK = threading.Lock()


def session_for(root: Path) -> DvcSession:
    """One in-process DVC Repo per project for the life of the process (cheap cached checks)."""
    with _SESSIONS_LOCK:
        if root not in _SESSIONS:
            _SESSIONS[root] = DvcSession(root)
        return _SESSIONS[root]


@task(name="dvc-stage", task_run_name="{stage}", cache_policy=NO_CACHE, persist_result=False)
def dvc_stage(project: str, stage: str, force: bool = False, timeout_s: float | None = None,
              tail_lines: int = 20) -> Any:  # fmt: skip
    """Reproduce one stage (`dvc repro --single-item`); Completed(name='Cached') when DVC skips it."""
    logger = get_run_logger()

    def on_line(stream: str, line: str) -> None:
        (logger.error if line.startswith("ERROR:") else logger.info)(line)

    outcome = reproduce_stage(session_for(Path(project)), stage, force, on_line, timeout_s, tail_lines)
    if outcome.status == "cached":
        return Completed(name="Cached", message=f"Stage '{stage}' didn't change, skipping", data=outcome.as_dict())
    if outcome.status == "restored":
        return Completed(name="Cached", message=f"Stage '{stage}' restored from the DVC run cache",
                         data=outcome.as_dict())  # fmt: skip
    logger.info("stage '%s' ran in %.1f s", stage, outcome.seconds)
    return outcome.as_dict()


def _stage_options(params: FlowParams, stage: str) -> tuple[int, float]:
    own = params.stages.get(stage)
    retries = own.retries if own and own.retries is not None else params.retries
    timeout = own.timeout_s if own and own.timeout_s is not None else params.timeout_s
    return retries, timeout


def _publish(root: Path, summary: dict[str, Any]) -> None:
    """The run's artifacts: report markdown, stage table, links to Data Docs and the model card."""
    create_markdown_artifact(markdown=pipeline_markdown(root, summary), key="ijepa-pipeline-report",
                             description="stages, metrics vs baselines, links, revision")  # fmt: skip
    create_table_artifact(table=summary["stages"], key="ijepa-pipeline-stages", description="stage outcomes")
    for (label, url, exists), key in zip(links(root), ("ijepa-data-docs", "ijepa-model-card"), strict=True):
        if exists:
            create_link_artifact(link=url, link_text=label, key=key)
    figures = figures_markdown(root)
    if figures:
        create_markdown_artifact(markdown=figures, key="ijepa-pipeline-figures",
                                 description="loss, collapse monitor, accuracy vs labels and vs step")  # fmt: skip


@flow(name="ijepa-pipeline", log_prints=True)
def ijepa_pipeline(
    project: str = ".",
    target: str | None = None,
    force: bool = False,
    overrides: list[str] | None = None,
    exp_name: str | None = None,
) -> dict[str, Any]:
    """Reproduce the DVC pipeline stage by stage (up to `target`); `overrides` run as a DVC experiment."""
    logger = get_run_logger()
    root = find_root(project)
    params: FlowParams = load_section("flow", root / "params.yaml", FlowParams)
    target = target or params.target
    with ProjectLock(root, params.lock_timeout_s):
        session = session_for(root)
        session.reset()
        if overrides:
            logger.info("applying params overrides (as `dvc exp run -S`): %s", " ".join(overrides))
            apply_param_overrides(root, overrides)
            session.reset()
        specs = session.stages()
        order, upstream = topological_order(specs, target), upstream_map(specs)
        logger.info("stages in order: %s", " -> ".join(order))
        summary: dict[str, Any] = {"project": str(root), "target": target, "overrides": overrides or [],
                                   "stages": [], "failed_stage": None, "error": None}  # fmt: skip
        failed_state = None
        states: dict[str, Any] = {}
        for name in order:
            retries, timeout = _stage_options(params, name)
            run = dvc_stage.with_options(retries=retries, retry_delay_seconds=params.retry_delay_s,
                                         timeout_seconds=timeout + 60)  # fmt: skip
            # wait_for: the run graph draws the stage graph's edges (tasks still run one at a time)
            needs = [states[u] for u in sorted(upstream.get(name, ())) if u in states]
            state = run(str(root), name, force, timeout, params.log_tail_lines, return_state=True, wait_for=needs)
            states[name] = state
            if not state.is_completed():
                summary["failed_stage"], failed_state = name, state
                summary["error"] = state.message
                break
            outcome = state.result()
            summary["stages"].append(outcome)
        revision = session.revision()
        if overrides and failed_state is None:
            include = session.untracked_stage_files([s["stage"] for s in summary["stages"]])
            revision["experiment"] = exp_save(root, exp_name, include, lambda _s, line: logger.info(line))
            logger.info("saved as DVC experiment %s (dvc exp show)", revision["experiment"])
        summary["revision"] = revision
        _publish(root, summary)
    if failed_state is not None:
        try:
            failed_state.result()  # re-raises the stage's own exception
        except StageFailed:
            raise
        except BaseException as exc:
            raise StageFailed(f"stage '{summary['failed_stage']}': {exc}") from exc
        raise StageFailed(f"stage '{summary['failed_stage']}' ended {failed_state.name}: {failed_state.message}")
    cached = sum(s["status"] != "ran" for s in summary["stages"])
    logger.info("done: %d stages, %d cached/restored, %d ran", len(summary["stages"]), cached,
                len(summary["stages"]) - cached)  # fmt: skip
    return summary
