"""Headless Chromium (Debian's `chromium`) with no network, for tests that look at generated pages."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--proxy-server=http://127.0.0.1:9",  # even outside a network namespace, nothing leaves the machine
    "--host-resolver-rules=MAP * ~NOTFOUND",
]


def chromium() -> str:
    """The browser's path, or skip the test saying how to get one."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("headless-browser check needs Debian's chromium (apt-get install chromium; .ci/run installs it)")
    return exe


def _no_network_prefix() -> list[str]:
    """`unshare -n` (a fresh network namespace: no interface is up) where this user may create one."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n"]
    return []


def dump_dom(page: Path, profile: Path, budget_ms: int = 15000, timeout_s: float = 180) -> str:
    """The page's DOM after its scripts ran (`--dump-dom` after `budget_ms` of virtual time), offline."""
    cmd = [*_no_network_prefix(), chromium(), *FLAGS, f"--user-data-dir={profile}",
           f"--virtual-time-budget={budget_ms}", "--dump-dom", page.resolve().as_uri()]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}"
    return proc.stdout
