"""The `ijepa` console script (typer): thin commands over the pipeline library.

Each command wires arguments to a function in `pipeline/` (or `flows/` for orchestration, imported
lazily so plain commands never load Prefect). `dvc repro` remains the way to run the whole pipeline.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
    resize (center-crop | pad | stretch), shard_max_count, shard_max_bytes, on_corrupt (fail | skip).
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


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
