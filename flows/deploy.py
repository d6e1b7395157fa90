"""Deployments served by `ijepa flow serve`: a nightly retrain (cron) and an on-demand sweep.

`prefect.serve` registers both with the configured Prefect API (PREFECT_API_URL or params
`flow.api_url`) and runs their flow runs in child processes of the serving process. It needs a real
server (`prefect server start --host 127.0.0.1`): an ephemeral API has no scheduler and nobody else
could trigger the runs. To run flows elsewhere, deploy the same entrypoints to a work pool instead
(docs/ORCHESTRATION.md).
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


def serve(root: Path, params: FlowParams, limit: int | None = None) -> None:
    """Serve both deployments until interrupted (blocks)."""
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        raise NoServerError(
            "serving needs a Prefect server: run `prefect server start --host 127.0.0.1` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api (or params flow.api_url)"
        )
    from prefect import serve as prefect_serve

    prefect_serve(*build_deployments(root, params), limit=limit)
