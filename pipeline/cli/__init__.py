"""The `ijepa` console script (typer): thin commands over the pipeline library (pyproject `pipeline.cli:app`).

- `app.py`: the typer application and its commands
- `orchestration.py`: `ijepa flow …` and `ijepa sweep` (Prefect and Optuna, imported lazily)
"""

from pipeline.cli.app import app, main

__all__ = ["app", "main"]
