"""`ijepa shard`, `ijepa validate` and `ijepa publish-shards`: the data commands (pipeline/data)."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.cli.errors import fail


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
