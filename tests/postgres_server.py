"""A real, throw-away PostgreSQL server for tests: Debian's `postgresql` binaries on 127.0.0.1.

`start_postgres()` runs `initdb` in a fresh temporary directory and `pg_ctl start` on a free port
(TCP on 127.0.0.1 only, trust authentication for the `postgres` role, its socket inside the data
directory) and returns the SQLAlchemy URL; `stop()` shuts it down and removes the directory.
PostgreSQL refuses to run as root: under root (CI, these machines) the data directory is handed to
the unprivileged user `nobody` and the server binaries run as that user through `runuser`.
Missing binaries raise with the package to install (`apt-get install postgresql`).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.prefect_server import free_port

UNPRIVILEGED = "nobody"


def bin_dir() -> Path:
    """Directory of initdb/pg_ctl: Debian's /usr/lib/postgresql/<version>/bin (newest), else PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise FileNotFoundError("PostgreSQL server binaries not found: apt-get install -y postgresql")


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", UNPRIVILEGED, "--", *cmd] if os.geteuid() == 0 else cmd


@dataclass
class PostgresServer:
    """A running server: `url` (SQLAlchemy, psycopg2 driver), its data directory and port."""

    url: str
    data: Path
    port: int
    bindir: Path

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(_as_server_user([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                                            "-w", "stop"]), capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(self.data.parent, ignore_errors=True)


def _run(cmd: list[str], timeout: float = 120) -> None:
    proc = subprocess.run(_as_server_user(cmd), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def start_postgres(timeout: float = 120) -> PostgresServer:
    """initdb + pg_ctl start on 127.0.0.1:<free port>; waits until it accepts connections."""
    bindir = bin_dir()
    base = Path(tempfile.mkdtemp(prefix="ijepa-pg-"))
    data = base / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, UNPRIVILEGED)
        shutil.chown(data, UNPRIVILEGED)
    _run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
    port = free_port()
    opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={data} -c fsync=off"
    server = PostgresServer(f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres", data, port, bindir)
    try:
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(data / "server.log"), "-w",
              "-t", str(int(timeout)), "start"], timeout=timeout + 30)  # fmt: skip
        deadline = time.monotonic() + timeout
        while subprocess.run([str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                             capture_output=True).returncode != 0:  # fmt: skip
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres on port {port} never became ready")
            time.sleep(0.2)
    except BaseException:
        server.stop()
        raise
    return server
