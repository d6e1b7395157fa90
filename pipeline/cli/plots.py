"""`ijepa plots-template`: the offline page of `dvc plots show` / `dvc plots diff`."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.cli.errors import fail


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
