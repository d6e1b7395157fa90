"""Prefect environment, set in one place before `prefect` is first imported.

Project-local PREFECT_HOME (gitignored `.prefect/`), no analytics or telemetry, a startup timeout long
enough for the first database migration of an ephemeral API on a slow machine. Values already in the
environment win (tests and users point PREFECT_API_URL / PREFECT_HOME elsewhere). Importing this module
applies the defaults; `configure()` also sets the API URL from params (`flow.api_url`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

DEFAULTS = {
    "PREFECT_HOME": str(PROJECT_ROOT / ".prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
}


def configure(api_url: str | None = None) -> None:
    """Apply the defaults; `api_url` (params `flow.api_url`) is used unless PREFECT_API_URL is set."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    if api_url:
        if "prefect" in sys.modules and os.environ.get("PREFECT_API_URL") != api_url:
            raise RuntimeError("flows._env.configure(api_url) must run before prefect is imported")
        os.environ.setdefault("PREFECT_API_URL", api_url)


def subprocess_env() -> dict[str, str]:
    """Environment for DVC child processes: this interpreter's bin first on PATH, unbuffered output."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


configure()
