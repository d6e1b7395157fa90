"""Prefect orchestration of the DVC pipeline: flows, deployments, sweeps (no math here).

Importing this package applies the Prefect environment (flows/_env.py) before any submodule can
import prefect: project-local PREFECT_HOME, analytics off, a long ephemeral-startup timeout.
"""

from flows import _env  # noqa: F401
