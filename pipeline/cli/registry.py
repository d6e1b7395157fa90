"""`ijepa registry register|promote|list|show|get` and `ijepa lineage`: the registry commands
(pipeline/registry), gto tags and the hash-verified audit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from pipeline.cli.errors import fail

registry_app = typer.Typer(
    help="Versions and stages of the encoder as gto git tags (<artifact>@vX.Y.Z, <artifact>#<stage>#N). "
    "Run `dvc repro` and commit first: a version is a commit that holds registry/entry.json.",
    no_args_is_help=True,
)
ARTIFACT_OPT = typer.Option(None, help="artifact name (default: params.yaml register.artifact)")
T = TypeVar("T")


def _artifact(name: str | None) -> str:
    from pipeline.config import ParamsError, RegisterParams, load_section

    if name:
        return name
    try:
        return load_section("register", "params.yaml", RegisterParams).artifact
    except ParamsError:
        return RegisterParams().artifact


def registry_call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call a registry/lineage function; its expected errors become a one-line message and exit 1."""
    from pipeline.registry.records import RecordError
    from pipeline.registry.versions import RegistryError

    try:
        return fn(*args, **kwargs)
    except (RegistryError, RecordError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None


def _echo_json(data: object) -> None:
    import json

    typer.echo(json.dumps(data, indent=2, default=str))


@registry_app.command("register")
def registry_register(
    version: str = typer.Option(None, help="explicit semantic version (default: v0.1.0 first, then a bump)"),
    bump: str = typer.Option("minor", help="major | minor | patch, when no --version is given"),
    ref: str = typer.Option("HEAD", help="commit holding the run (dvc.lock + registry/entry.json)"),
    message: str = typer.Option(None, help="tag message"),
    artifact: str = ARTIFACT_OPT,
) -> None:
    """Register the committed run as a new version of the encoder (a gto tag)."""
    from pipeline.registry.versions import register_version

    rec = registry_call(register_version, Path("."), _artifact(artifact), ref=ref, version=version, bump=bump,
                         message=message)  # fmt: skip
    gate = "passed" if rec["gate_passed"] else "FAILED (not promotable to prod)"
    typer.echo(f"registered {rec['tag']} at {rec['commit'][:10]} (gate {gate})")


@registry_app.command("promote")
def registry_promote(
    stage: str = typer.Option(..., help="dev | staging | prod"),
    version: str = typer.Option(None, help="version to promote (default: the latest)"),
    message: str = typer.Option(None, help="tag message"),
    artifact: str = ARTIFACT_OPT,
) -> None:
    """Assign a stage to a version; prod only when the version's entry says the quality gate passed."""
    from pipeline.registry.versions import promote

    rec = registry_call(promote, Path("."), _artifact(artifact), stage, version=version, message=message)
    typer.echo(f"promoted {rec['version']} to {rec['stage']}: {rec['tag']}")


def _versions_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("version", "commit", "stages", "gate", "linear top-1", "random-init", "raw pixels", "created")
    for r in rows:
        m = r["metrics"]
        cells = [f"{m[k]:.4f}" if isinstance(m.get(k), (int, float)) else "-" for k in m]
        gate = {True: "passed", False: "FAILED"}.get(r["gate_passed"], "-")
        table.add_row(r["version"], r["commit"][:10], ", ".join(r["stages"]) or "-", gate, *cells, r["created_at"])
    Console().print(table)


@registry_app.command("list")
def registry_list(json_out: bool = typer.Option(False, "--json", help="machine-readable output"),
                  artifact: str = ARTIFACT_OPT) -> None:  # fmt: skip
    """All versions with their stages, gate and headline metrics (from each version's entry)."""
    from pipeline.registry.versions import versions

    rows = registry_call(versions, Path("."), _artifact(artifact))
    if json_out:
        _echo_json(rows)
    elif not rows:
        typer.echo("no registered versions (ijepa registry register)")
    else:
        _versions_table(rows)


@registry_app.command("show")
def registry_show(
    version: str = typer.Option(None, help="show this version in detail"),
    stage: str = typer.Option(None, help="show the version in this stage in detail"),
    json_out: bool = typer.Option(False, "--json", help="machine-readable output"),
    artifact: str = ARTIFACT_OPT,
) -> None:
    """Versions and stages (like `list`); with --version/--stage, one version's entry in detail."""
    from pipeline.registry.versions import version_detail

    if not version and not stage:
        registry_list(json_out=json_out, artifact=artifact)
        return
    rec = registry_call(version_detail, Path("."), _artifact(artifact), version=version, stage=stage)
    if json_out:
        _echo_json(rec)
        return
    entry = rec.pop("entry") or {}
    _versions_table([rec])
    for check in (entry.get("gate") or {}).get("checks", []):
        typer.echo(f"gate: {check['name']}: {check['observed']} (required {check['required']})")
    typer.echo(f"encoder sha256 {(entry.get('encoder') or {}).get('sha256')}, entry created {entry.get('created_at')}")


@registry_app.command("get")
def registry_get(
    version: str = typer.Option(None, help="version (default: latest)"),
    stage: str = typer.Option(None, help="stage, e.g. prod"),
    cache_dir: Path = typer.Option(None, help="where to materialise (default .ijepa/registry-cache)"),
    artifact: str = ARTIFACT_OPT,
) -> None:
    """Print the path of a version's weights, materialised from DVC at its tag and sha256-verified."""
    from pipeline.registry.versions import fetch_encoder

    typer.echo(str(registry_call(fetch_encoder, Path("."), _artifact(artifact), version=version, stage=stage,
                                  cache_dir=cache_dir)))  # fmt: skip


def lineage(
    version: str = typer.Option(None, help="audit this registered version (read at its tag)"),
    stage: str = typer.Option(None, help="audit the version in this stage"),
    verify: bool = typer.Option(False, "--verify", help="recompute every recorded hash; exit 1 on any mismatch"),
    json_out: bool = typer.Option(False, "--json", help="machine-readable output"),
    artifact: str = ARTIFACT_OPT,
) -> None:
    """Lineage of the workspace or of a version: version → commit → encoder → metrics → params → validation →
    shards → manifest → source dataset, from dvc.lock, registry/entry.json and git."""
    from rich.console import Console

    from pipeline.registry.lineage import build_lineage, render_tree, to_json
    from pipeline.registry.lineage import verify as verify_lineage

    lin = registry_call(build_lineage, Path("."), _artifact(artifact), version=version, stage=stage)
    checks = registry_call(verify_lineage, lin) if verify else None
    if json_out:
        _echo_json(to_json(lin, checks))
    else:
        console = Console()
        console.print(render_tree(lin, checks))
        if checks is not None:
            failed = [c for c in checks if c.failed]
            skipped = [c for c in checks if c.status == "skipped"]
            for c in failed:
                console.print(f"[red]{c.status.upper()}[/] {c.subject}: " + "; ".join(c.details), highlight=False)
            for c in skipped:
                console.print(f"[yellow]skipped[/] {c.subject}: " + "; ".join(c.details), highlight=False)
            verdict = f"{len(failed)} mismatch(es)" if failed else "all hashes match"
            console.print(f"verify: {len(checks)} checks, {verdict}, {len(skipped)} skipped")
    if checks is not None and any(c.failed for c in checks):
        raise typer.Exit(1)
