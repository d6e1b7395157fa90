"""A real, local Prefect server for tests and CI: `prefect server start` on 127.0.0.1 and a free port.

`ensure_server()` starts one server per Python process (its own PREFECT_HOME in a temp dir, analytics
off, no UI), waits for `/api/health`, points this process' environment at it (`PREFECT_API_URL`) and
stops it at exit. The test modules that need Prefect call it from a fixture; `.ci/prefect-server`
runs `main()` to keep one in the foreground for manual checks.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
STARTUP_TIMEOUT_S = 180.0


@dataclass
class PrefectServer:
    """A running server: its API URL, process and PREFECT_HOME."""

    api_url: str
    proc: subprocess.Popen
    home: Path
    log: Path

    def env(self) -> dict[str, str]:
        """Environment variables that point a client (or `prefect` CLI) at this server."""
        return {
            "PREFECT_API_URL": self.api_url,
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        shutil.rmtree(self.home, ignore_errors=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp:  # noqa: S310 - local URL
            return resp.status == 200
    except OSError:
        return False


def start_server(timeout: float = STARTUP_TIMEOUT_S) -> PrefectServer:
    """Start `prefect server start --host 127.0.0.1 --port P` and wait until it answers."""
    home = Path(tempfile.mkdtemp(prefix="prefect-home-"))
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("PREFECT_")]:
        del env[key]
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
        }
    )
    log = home / "server.log"
    cmd = [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    server = PrefectServer(api_url, proc, home, log)
    deadline = time.monotonic() + timeout
    while not healthy(api_url):
        if proc.poll() is not None or time.monotonic() > deadline:
            text = log.read_text(errors="replace")[-3000:]
            server.stop()
            raise RuntimeError(f"prefect server did not come up on {api_url}:\n{text}")
        time.sleep(0.5)
    return server


_SERVER: PrefectServer | None = None


def ensure_server() -> PrefectServer:
    """One server per process, started on first use, pointed at by os.environ, stopped at exit."""
    global _SERVER
    if _SERVER is None or _SERVER.proc.poll() is not None:
        _SERVER = start_server()
        atexit.register(_SERVER.stop)
    os.environ.update(_SERVER.env())
    return _SERVER


def main() -> int:
    """Run a server in the foreground; print its URL and the variables to export."""
    server = start_server()
    print(f"export PREFECT_API_URL={server.api_url}", flush=True)
    print(f"# server log: {server.log}; Ctrl-C stops it", flush=True)
    try:
        server.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
