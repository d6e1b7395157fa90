"""The `ijepa` console script (typer): thin commands over the pipeline library.

Each command wires arguments to a function in `pipeline/` (or `flows/` for orchestration, imported
lazily so plain commands never load Prefect). `dvc repro` remains the way to run the whole pipeline.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

app = typer.Typer(
    help="I-JEPA MLOps pipeline: shard, validate, pretrain, evaluate, register. "
    "Run `dvc repro` for the whole pipeline; these commands run or inspect pieces of it.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main_callback() -> None:
    """I-JEPA pipeline tools (see `ijepa COMMAND --help`)."""


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line error to stderr and return the Exit to raise."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


@app.command()
def shard(
    params: Path = typer.Option(Path("params.yaml"), help="params file; its `data` section is used"),
    out: Path = typer.Option(Path("data/shards"), help="output directory for {train,val,test}/*.tar"),
    manifest: Path = typer.Option(Path("data/manifest.csv"), help="manifest CSV path"),
    report: Path = typer.Option(Path("reports/shard.json"), help="shard report JSON path"),
    workers: int = typer.Option(0, help="encoding/writing processes (0 = all cores)"),
) -> None:
    """Shard the configured dataset into deterministic WebDataset tars plus a hashed manifest.

    Params (section `data`): source (fashion-mnist | imagefolder), root, seed, val_size (fashion-mnist),
    val_fraction/test_fraction (imagefolder), max_per_class, image_mode (L | RGB), image_size and
    resize (keep-ratio | center-crop | pad | stretch), encoding (auto | keep | jpeg | png), jpeg_quality,
    deduplicate, shard_max_count, shard_max_bytes, on_corrupt (fail | skip).
    """
    from pipeline.config import ParamsError, load_section
    from pipeline.data.shards import shard_dataset
    from pipeline.data.sources import CorruptImageError, SourceError

    try:
        summary = shard_dataset(load_section("data", params), out, manifest, report, workers=workers or None)
    except (ParamsError, SourceError, CorruptImageError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"{summary['count']['total']} images in {summary['shards']['total']} shards "
               f"({summary['images_per_s']:.0f} images/s); report: {report}")  # fmt: skip


@app.command()
def validate(
    shards: Path = typer.Option(Path("data/shards"), help="shard directory holding {split}/*.tar"),
    manifest: Path = typer.Option(Path("data/manifest.csv"), help="manifest CSV of those shards"),
    params: Path = typer.Option(Path("params.yaml"), help="params file; its `validate` section is used"),
    report: Path = typer.Option(Path("reports/validation.json"), help="validation report JSON path"),
    docs: Path = typer.Option(Path("reports/data_docs"), help="great-expectations Data Docs directory"),
    no_docs: bool = typer.Option(False, "--no-docs", help="skip building Data Docs"),
) -> None:
    """Validate any shard directory against its manifest with the great-expectations gate.

    Same checks as the `validate` stage: manifest schema, labels, hashes, every sample re-read and
    decoded, missing/stray shards, split sizes, class balance, duplicates and leakage, pixel stats.
    Writes the report (also on failure); exits 1 when an `error`-severity check fails, listing each
    failed check with its observed and expected value on stderr.
    """
    from pipeline.config import ParamsError, load_section
    from pipeline.data.validation import run_validation, summary_lines

    try:
        section = load_section("validate", params)
    except ParamsError as exc:
        raise fail(str(exc)) from None
    code, result = run_validation(shards, manifest, section, report, None if no_docs else docs)
    lines = summary_lines(result)
    typer.echo("\n".join(lines), err=bool(code) or len(lines) > 1)
    if code:
        raise typer.Exit(code)
    typer.echo(f"normalization (train): {result['normalization']}; report: {report}")


# --- registry (gto) and lineage ------------------------------------------------------------------------
registry_app = typer.Typer(
    help="Versions and stages of the encoder as gto git tags (<artifact>@vX.Y.Z, <artifact>#<stage>#N). "
    "Run `dvc repro` and commit first: a version is a commit that holds registry/entry.json.",
    no_args_is_help=True,
)
app.add_typer(registry_app, name="registry")
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


def _registry_call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
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

    rec = _registry_call(register_version, Path("."), _artifact(artifact), ref=ref, version=version, bump=bump,
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

    rec = _registry_call(promote, Path("."), _artifact(artifact), stage, version=version, message=message)
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

    rows = _registry_call(versions, Path("."), _artifact(artifact))
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
    rec = _registry_call(version_detail, Path("."), _artifact(artifact), version=version, stage=stage)
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

    typer.echo(str(_registry_call(fetch_encoder, Path("."), _artifact(artifact), version=version, stage=stage,
                                  cache_dir=cache_dir)))  # fmt: skip


@app.command()
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

    lin = _registry_call(build_lineage, Path("."), _artifact(artifact), version=version, stage=stage)
    checks = _registry_call(verify_lineage, lin) if verify else None
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


@app.command("export")
def export_cmd(
    out: Path = typer.Argument(..., help="directory to write (created; an earlier export there is replaced)"),
    fmt: str = typer.Option(..., "--format", help="export format: transformers (a Hugging Face IJepaModel)"),
    encoder: str = typer.Option("models/encoder.safetensors", help="encoder file/directory, version or stage"),
) -> None:
    """Export the encoder for use outside this project: `--format transformers` writes a directory that
    `transformers.IJepaModel.from_pretrained(DIR)` loads offline (config.json, model.safetensors,
    ijepa_export.json); features = `last_hidden_state.mean(dim=1)`, checked equal to ours before writing."""
    if fmt != "transformers":
        raise fail(f"--format {fmt!r}: unknown (supported: transformers)")
    import pipeline
    from pipeline.export_transformers import ExportError, export_transformers

    try:
        vit = _registry_call(pipeline.load_encoder, encoder)
        record = export_transformers(vit, out, source=encoder)
    except (ExportError, ValueError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"{out}: IJepaModel (transformers {record['transformers_version']}), pooled features max abs diff "
               f"{record['check']['pooled_max_abs_diff']:.2e} vs ours")  # fmt: skip


@app.command("plots-template")
def plots_template_cmd(
    path: Path = typer.Option(None, help="where to write (default: .dvc/config plots.html_template)"),
) -> None:
    """Write the offline page that `dvc plots show` / `dvc plots diff` fill (vega, vega-lite and
    vega-embed inlined from vl-convert-python: the plots draw with no network). `make setup` runs it."""
    from pipeline.plots_template import PlotsTemplateError, write_template

    try:
        written = write_template(".", path)
    except PlotsTemplateError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"{written}: {written.stat().st_size} bytes")


@app.command("publish-shards")
def publish_shards(
    url: str = typer.Argument(..., help="destination folder in object storage, e.g. s3://bucket/ijepa/shards"),
    shards: Path = typer.Option(Path("data/shards"), help="local shard folder ({train,val,test}/*.tar)"),
) -> None:
    """Upload the shards to object storage, for training and evaluation with `IJEPA_SHARD_URL=URL`.

    Credentials and endpoint come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_ENDPOINT_URL for MinIO and the like). Run it after `dvc repro shard` so the copy matches dvc.lock.
    """
    from pipeline.data import remote

    if not remote.is_url(url):
        raise fail(f"{url!r} is not a URL (e.g. s3://bucket/ijepa/shards)")
    try:
        done = remote.publish_shards(shards, url)
    except (FileNotFoundError, OSError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"published {len(done)} shards to {url}; read them with IJEPA_SHARD_URL={url}")


# Orchestration (Prefect flows, deployments, Optuna sweep): pipeline/cli/orchestration.py, lazy imports.
from pipeline.cli.orchestration import flow_app, sweep  # noqa: E402

app.add_typer(flow_app, name="flow")
app.command("sweep")(sweep)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
