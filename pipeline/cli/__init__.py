"""The `ijepa` console script (typer): thin commands over the pipeline library (pyproject `pipeline.cli:app`).

- `app.py`: the typer application; registers every command below
- `data.py`: `shard`, `validate`, `publish-shards`
- `registry.py`: `registry register|promote|list|show|get`, `lineage`
- `export.py`: `export --format transformers`
- `plots.py`: `plots-template`
- `orchestration.py`: `flow run|serve|deploy|stages`, `sweep` (Prefect and Optuna, imported lazily)
- `errors.py`: `fail`, the one-line `error: …` exit
"""

from pipeline.cli.app import app, main

__all__ = ["app", "main"]
