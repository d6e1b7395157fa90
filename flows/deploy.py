"""The two deployments, a nightly retrain (cron) and an on-demand sweep: served, or on a work pool.

`serve` (`ijepa flow serve`): `prefect.serve` registers both with the configured Prefect API
(PREFECT_API_URL or params `flow.api_url`) and runs their flow runs in child processes of the serving
process. `deploy` (`ijepa flow deploy`): registers the same two deployments to a work pool (created as a
`process` pool when missing), with the code loaded from this checkout (`from_source`); any
`prefect worker start --pool NAME` that can see that path then runs them. Both need a real server
(`prefect server start --host 127.0.0.1`): an ephemeral API has no scheduler and nobody else could
trigger the runs. Docker and Kubernetes pools: docs/ORCHESTRATION.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.schedules import Cron

from flows.pipeline import ijepa_pipeline
from flows.sweep import ijepa_sweep
from pipeline.config import FlowParams

NIGHTLY = "nightly-retrain"
SWEEP = "sweep"
CODE_ROOT = Path(__file__).resolve().parents[1]  # holds flows/: the entrypoints' base directory
ENTRYPOINTS = {NIGHTLY: "flows/pipeline.py:ijepa_pipeline", SWEEP: "flows/sweep.py:ijepa_sweep"}


class NoServerError(RuntimeError):
    """Serving was asked for without a Prefect API URL."""


def build_deployments(root: Path, params: FlowParams) -> list[Any]:
    """The RunnerDeployments: `ijepa-pipeline/nightly-retrain` (cron) and `ijepa-sweep/sweep` (no schedule)."""
    nightly = ijepa_pipeline.to_deployment(
        name=NIGHTLY,
        schedules=[Cron(params.cron, timezone=params.timezone)],
        parameters={"project": str(root), "target": params.target},
        description=f"Reproduce the DVC pipeline of {root} ({params.cron} {params.timezone}); cached stages skip.",
        tags=["ijepa", "nightly"],
    )
    sweep = ijepa_sweep.to_deployment(
        name=SWEEP,
        parameters={"project": str(root)},
        description="On demand: `prefect deployment run ijepa-sweep/sweep -p n_trials=20`.",
        tags=["ijepa", "sweep"],
    )
    return [nightly, sweep]


def _require_server(what: str) -> None:
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        raise NoServerError(
            f"{what} needs a Prefect server: run `prefect server start --host 127.0.0.1` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api (or params flow.api_url)"
        )


def ensure_work_pool(name: str) -> str:
    """The pool's type; a missing pool is created as a `process` pool (its default job template)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            return client.read_work_pool(name).type
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            return client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template)).type


def deploy(root: Path, params: FlowParams, pool: str | None = None, queue: str | None = None) -> dict[str, str]:
    """Register both deployments to work pool `pool` (default params `flow.work_pool`); returns
    {deployment name: id}. Their runs load the flows from this checkout's code (CODE_ROOT) and work on
    `root`, so a worker needs both paths (the same checkout, or one at the same path)."""
    _require_server("deploying")
    from prefect import Flow

    pool = pool or params.work_pool
    ensure_work_pool(pool)
    common = {"work_pool_name": pool, "work_queue_name": queue, "build": False, "push": False,
              "print_next_steps": False, "ignore_warnings": True}  # fmt: skip
    nightly = Flow.from_source(str(CODE_ROOT), ENTRYPOINTS[NIGHTLY]).deploy(
        name=NIGHTLY,
        schedules=[Cron(params.cron, timezone=params.timezone)],
        parameters={"project": str(root), "target": params.target},
        description=f"Reproduce the DVC pipeline of {root} ({params.cron} {params.timezone}); cached stages skip.",
        tags=["ijepa", "nightly"],
        **common,
    )
    sweep = Flow.from_source(str(CODE_ROOT), ENTRYPOINTS[SWEEP]).deploy(
        name=SWEEP,
        parameters={"project": str(root)},
        description="On demand: `prefect deployment run ijepa-sweep/sweep -p n_trials=20`.",
        tags=["ijepa", "sweep"],
        **common,
    )
    return {f"{ijepa_pipeline.name}/{NIGHTLY}": str(nightly), f"{ijepa_sweep.name}/{SWEEP}": str(sweep)}


def serve(root: Path, params: FlowParams, limit: int | None = None) -> None:
    """Serve both deployments until interrupted (blocks)."""
    _require_server("serving")
    from prefect import serve as prefect_serve

    prefect_serve(*build_deployments(root, params), limit=limit)
