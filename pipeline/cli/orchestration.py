"""`ijepa flow run|serve|deploy|stages` and `ijepa sweep`: the Prefect/Optuna commands of the console script.

Registered on the main app by pipeline/cli/app.py. Prefect, Optuna and the flows are imported inside the
command functions only, after flows/_env.py has set the Prefect environment, so other commands never
load them.
"""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.cli.errors import fail

flow_app = typer.Typer(help="Run the DVC pipeline as a Prefect flow, or serve or deploy its deployments.",
                       no_args_is_help=True)  # fmt: skip


def _prepare(project: Path) -> Path:
    """Project root; Prefect environment configured from params `flow` (before prefect is imported)."""
    from flows import _env
    from flows.dvc_runner import find_root
    from pipeline.config import FlowParams, ParamsError, load_section

    try:
        root = find_root(project)
        params = load_section("flow", root / "params.yaml", FlowParams)
    except (FileNotFoundError, ParamsError) as exc:
        raise fail(str(exc)) from None
    _env.configure(params.api_url)
    return root


@flow_app.command("stages")
def flow_stages(project: Path = typer.Option(Path("."), help="DVC project root (or a folder inside it)"),
                target: str | None = typer.Option(None, "--target", "-t", help="only this stage and what it needs"),
                ) -> None:  # fmt: skip
    """Print the stages in the order the flow runs them (read from DVC's stage graph; no Prefect)."""
    from flows.dvc_runner import DvcSession, find_root
    from pipeline.dag import DagError, topological_order

    session = DvcSession(find_root(project))
    try:
        for name in topological_order(session.stages(), target):
            typer.echo(name)
    except DagError as exc:
        raise fail(str(exc)) from None
    finally:
        session.close()


@flow_app.command("run")
def flow_run(
    project: Path = typer.Option(Path("."), help="DVC project root (or a folder inside it)"),
    target: str | None = typer.Option(None, "--target", "-t", help="run stages up to this one (default: all)"),
    force: bool = typer.Option(False, "--force", "-f", help="reproduce even unchanged stages"),
    set_param: list[str] = typer.Option(
        [], "--set-param", "-S", help="params override key=value (repeatable); the run is saved as a DVC experiment"
    ),  # fmt: skip
    name: str | None = typer.Option(None, "--name", "-n", help="experiment name when -S is given"),
) -> None:
    """Run the pipeline once as the Prefect flow `ijepa-pipeline` (ephemeral API unless one is configured)."""
    root = _prepare(project)
    from flows.dvc_runner import LockTimeout, StageFailed
    from flows.pipeline import ijepa_pipeline
    from pipeline.dag import DagError

    try:
        summary = ijepa_pipeline(project=str(root), target=target, force=force, overrides=set_param or None,
                                 exp_name=name)  # fmt: skip
    except (StageFailed, LockTimeout, DagError) as exc:
        raise fail(str(exc)) from None
    for stage in summary["stages"]:
        typer.echo(f"{stage['stage']:<16} {stage['status']:<9} {stage['seconds']:8.1f} s")
    if summary["revision"].get("experiment"):
        typer.echo(f"experiment: {summary['revision']['experiment']} (dvc exp show)")


@flow_app.command("serve")
def flow_serve(
    project: Path = typer.Option(Path("."), help="DVC project root (or a folder inside it)"),
    limit: int | None = typer.Option(None, help="at most this many concurrent flow runs"),
) -> None:
    """Serve `ijepa-pipeline/nightly-retrain` (cron: params flow.cron) and `ijepa-sweep/sweep` (on demand)."""
    root = _prepare(project)
    from flows.deploy import NoServerError, serve
    from pipeline.config import FlowParams, load_section

    try:
        serve(root, load_section("flow", root / "params.yaml", FlowParams), limit=limit)
    except NoServerError as exc:
        raise fail(str(exc)) from None


@flow_app.command("deploy")
def flow_deploy(
    project: Path = typer.Option(Path("."), help="DVC project root (or a folder inside it)"),
    pool: str | None = typer.Option(None, help="work pool (default: params flow.work_pool; created if missing)"),
    queue: str | None = typer.Option(None, help="work queue of the pool (default: the pool's default queue)"),
) -> None:
    """Register `ijepa-pipeline/nightly-retrain` and `ijepa-sweep/sweep` to a work pool; start workers with
    `prefect worker start --pool NAME`."""
    root = _prepare(project)
    from flows.deploy import NoServerError, deploy
    from pipeline.config import FlowParams, load_section

    params = load_section("flow", root / "params.yaml", FlowParams)
    try:
        ids = deploy(root, params, pool, queue)
    except NoServerError as exc:
        raise fail(str(exc)) from None
    for name, ident in ids.items():
        typer.echo(f"{name:<32} {ident}  (pool {pool or params.work_pool})")
    typer.echo(f"start a worker: prefect worker start --pool {pool or params.work_pool}")


def sweep(
    project: Path = typer.Option(Path("."), help="DVC project root (or a folder inside it)"),
    n_trials: int | None = typer.Option(
        None, "--n-trials", min=0, help="trials to run now (default: sweep.n_trials; 0: only report/apply)"
    ),
    study: str | None = typer.Option(None, help="study name (default: sweep.study); resumed if it exists"),
    storage: str | None = typer.Option(
        None,
        help="Optuna storage URL (default: sqlite:///.optuna/study.db); "
        "postgresql://user@host/db to share the study between workers",
    ),
    seed: int | None = typer.Option(None, help="TPE sampler seed (default: sweep.seed)"),
    apply: bool = typer.Option(False, "--apply", help="`dvc exp apply` the best experiment at the end"),
) -> None:
    """Optuna study over `sweep.space`; every trial is a `dvc exp run --temp` experiment (dvc exp show)."""
    root = _prepare(project)
    from flows.dvc_runner import LockTimeout, StageFailed
    from flows.sweep import ijepa_sweep

    try:
        summary = ijepa_sweep(project=str(root), n_trials=n_trials, study=study, storage=storage, seed=seed,
                              apply=apply)  # fmt: skip
    except (StageFailed, LockTimeout, ValueError) as exc:
        raise fail(str(exc)) from None
    for t in summary["trials"]:
        value = "" if t["value"] is None else f"{t['value']:.4f}"
        typer.echo(f"trial {t['number']:<4} {t['state']:<9} {value:>8}  {t['exp_name']}")
    best = summary["best"]
    if best is None:
        raise fail("no trial finished")
    applied = " [applied]" if summary.get("applied") else ""
    typer.echo(f"best: trial {best['number']} = experiment {best['exp_name']} "
               f"({summary['objective']} = {best['value']:.4f}){applied}")  # fmt: skip
