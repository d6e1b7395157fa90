"""`ijepa export --format transformers DIR`: the encoder for use outside this project."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.cli.errors import fail
from pipeline.cli.registry import registry_call


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
        vit = registry_call(pipeline.load_encoder, encoder)
        record = export_transformers(vit, out, source=encoder)
    except (ExportError, ValueError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"{out}: IJepaModel (transformers {record['transformers_version']}), pooled features max abs diff "
               f"{record['check']['pooled_max_abs_diff']:.2e} vs ours")  # fmt: skip
