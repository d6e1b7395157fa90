"""The `ijepa` application: registers every command of the console script (modules beside this file).

Each command wires arguments to a function in `pipeline/` (or `flows/` for orchestration, imported
lazily so plain commands never load Prefect); the commands live beside this file, one module per
concern (data.py, registry.py, export.py, plots.py, orchestration.py). `dvc repro` remains the way to
run the whole pipeline.
"""

from __future__ import annotations

import os
import sys

import typer

from pipeline.cli import data, export, orchestration, plots, registry

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


app.command()(data.shard)
app.command()(data.validate)
app.add_typer(registry.registry_app, name="registry")
app.command()(registry.lineage)
app.command("export")(export.export_cmd)
app.command("plots-template")(plots.plots_template_cmd)
app.command("publish-shards")(data.publish_shards)
# Orchestration (Prefect flows, deployments, Optuna sweep): lazy imports inside the commands.
app.add_typer(orchestration.flow_app, name="flow")
app.command("sweep")(orchestration.sweep)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
