"""DVC process control for the flows: one in-process Repo, `dvc` child processes, a repo lock.

Prefect-free, so the benchmark and the sweep use it too. Whether a stage is up to date is asked of
one in-process `dvc.repo.Repo` (`Stage.changed()`, the same check `dvc repro` makes), which costs
milliseconds instead of a `dvc` process start per stage. A stage that did change is reproduced by
`dvc repro --single-item STAGE` in a child process (its output streamed line by line to a callback,
its process group killed on timeout or when the caller is interrupted). `ProjectLock` keeps two
flows/sweeps from running DVC commands on one repository at the same time.
"""

from __future__ import annotations

import fcntl
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows._env import subprocess_env
from pipeline.dag import StageSpec, stage_name, stages_from_dvc

LineSink = Callable[[str, str], None]  # (stream: "stdout" | "stderr", line)
RUN_CACHE_MARK = "is cached - skipping run"


class StageFailed(RuntimeError):
    """A DVC stage (or dvc command) exited non-zero; the message quotes the stage's own error."""


class LockTimeout(RuntimeError):
    """Another flow or sweep holds the repository lock."""


def find_root(start: Path | str = ".") -> Path:
    """The nearest directory at or above `start` with a `.dvc/` folder (the DVC repository root)."""
    path = Path(start).resolve()
    for cand in (path, *path.parents):
        if (cand / ".dvc").is_dir():
            return cand
    raise FileNotFoundError(f"{path}: not inside a DVC repository (no .dvc/ found)")


class ProjectLock:
    """An exclusive flock on `.dvc/tmp/ijepa-orchestration.lock`, waited for at most `timeout_s`."""

    def __init__(self, root: Path, timeout_s: float = 600.0) -> None:
        self.path = root / ".dvc" / "tmp" / "ijepa-orchestration.lock"
        self.timeout_s = timeout_s
        self._fh: Any = None

    def __enter__(self) -> ProjectLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - held until __exit__
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    fh.seek(0)
                    holder = fh.read().strip() or "unknown"
                    fh.close()
                    raise LockTimeout(
                        f"another flow/sweep holds {self.path} ({holder}); waited {self.timeout_s:.0f} s "
                        "(params flow.lock_timeout_s)"
                    ) from None
                time.sleep(0.5)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


@dataclass
class CommandResult:
    """Outcome of one `dvc` child process."""

    args: list[str]
    returncode: int
    lines: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timed_out: bool = False
    stopped: bool = False  # killed because `stop()` said so (pruning)


# `python -m dvc`, but with SIGINT handled first: a child inherits an *ignored* SIGINT (jobs started
# with `&` from a non-interactive shell; a process in which DVC's in-process stage runner left SIGINT
# ignored), and then `_kill`'s SIGINT would do nothing for its whole grace period.
_DVC_MAIN = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from dvc.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _reader(stream: Any, name: str, out: queue.Queue) -> None:
    for raw in iter(stream.readline, ""):
        for part in raw.rstrip("\n").split("\r"):  # progress bars redraw with \r
            if part.strip():
                out.put((name, part.rstrip()))
    out.put((name, None))


def _kill(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGINT the process group (DVC cleans up temp dirs on it), then SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


def run_dvc(
    args: Sequence[str],
    cwd: Path,
    on_line: LineSink | None = None,
    timeout_s: float | None = None,
    stop: Callable[[], bool] | None = None,
    poll_s: float = 1.0,
) -> CommandResult:
    """Run `python -m dvc ARGS` in `cwd`, streaming its lines; kill it on timeout or when `stop()` is true."""
    cmd = [sys.executable, "-c", _DVC_MAIN, *args]
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, errors="replace", start_new_session=True,
    )  # fmt: skip
    result = CommandResult(list(args), -1)
    lines: queue.Queue = queue.Queue()
    readers = [threading.Thread(target=_reader, args=(s, n, lines), daemon=True)
               for s, n in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))]  # fmt: skip
    for t in readers:
        t.start()
    open_streams, next_poll = 2, start + poll_s
    try:
        while open_streams:
            now = time.monotonic()
            if timeout_s is not None and now - start > timeout_s:
                result.timed_out = True
                break
            if stop is not None and now >= next_poll:
                next_poll = now + poll_s
                if stop():
                    result.stopped = True
                    break
            try:
                name, text = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if text is None:
                open_streams -= 1
                continue
            result.lines.append(text)
            if name == "stderr":
                result.stderr.append(text)
            if on_line is not None:
                on_line(name, text)
    finally:
        if proc.poll() is None and (result.timed_out or result.stopped or open_streams):
            _kill(proc)
        result.returncode = proc.wait()
        result.seconds = time.monotonic() - start
    return result


def failure_reason(result: CommandResult) -> str:
    """The most telling line: the command's own last stderr line, else DVC's `ERROR:` line."""
    own = [s for s in result.stderr if not s.startswith(("ERROR:", "WARNING:")) and "Traceback" not in s]
    dvc_errors = [s for s in result.stderr if s.startswith("ERROR:")]
    if own:
        return own[-1]
    if dvc_errors:
        return dvc_errors[-1].removeprefix("ERROR: ")
    return result.lines[-1] if result.lines else f"exit status {result.returncode}"


@dataclass
class StageOutcome:
    """What happened to one stage: `cached` (DVC skipped it), `restored` (run cache) or `ran`."""

    stage: str
    status: str
    seconds: float
    command: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "status": self.status, "seconds": round(self.seconds, 3), "command": self.command}


class DvcSession:
    """One in-process DVC Repo reused for the stage graph, status checks and the revision."""

    def __init__(self, root: Path) -> None:
        from dvc.repo import Repo

        self.root = root
        self.repo = Repo(str(root))

    def stages(self) -> list[StageSpec]:
        return stages_from_dvc(self.repo)

    def _stage(self, name: str) -> Any:
        from dvc.stage import PipelineStage

        for stage in self.repo.index.stages:
            if isinstance(stage, PipelineStage) and stage_name(stage, self.root) == name:
                return stage
        raise StageFailed(f"stage {name!r} not found in {self.root}")

    def is_changed(self, name: str) -> bool:
        """The check `dvc repro` makes before it skips a stage ("didn't change")."""
        with self.repo.lock:
            return bool(self._stage(name).changed())

    def reset(self) -> None:
        """Forget the cached index after a child process rewrote dvc.lock."""
        self.repo._reset()

    def revision(self) -> dict[str, Any]:
        """git commit, dirty flag, branch and a hash of dvc.lock (the pipeline's data revision)."""
        import hashlib

        scm = self.repo.scm
        lock = self.root / "dvc.lock"
        try:
            rev, branch, dirty = scm.get_rev(), scm.active_branch(), scm.is_dirty(untracked_files=False)
        except Exception:  # noqa: BLE001 - no commit yet, detached head...
            rev, branch, dirty = None, None, True
        return {
            "git_commit": rev,
            "git_branch": branch,
            "git_dirty": dirty,
            "dvc_lock_sha256": hashlib.sha256(lock.read_bytes()).hexdigest()[:16] if lock.exists() else None,
        }

    def untracked_stage_files(self, names: Sequence[str]) -> list[str]:
        """Files git does not track yet that `dvc exp run` would commit for these stages: dvc.yaml,
        dvc.lock, `cache: false` outs (metrics, plots) and the .gitignore files beside cached outs."""
        wanted: set[str] = set()
        for name in names:
            stage = self._stage(name)
            wanted.add(Path(stage.path).relative_to(self.root).as_posix())
            wanted.add(Path(stage.dvcfile._lockfile.path).relative_to(self.root).as_posix())
            for out in stage.outs:
                rel = Path(out.fs_path).relative_to(self.root)
                wanted.add(rel.as_posix() if not out.use_scm_ignore else (rel.parent / ".gitignore").as_posix())
        untracked = set(self.repo.scm.untracked_files())
        return sorted(p for p in wanted if p in untracked or any(u.startswith(p + "/") for u in untracked))

    def close(self) -> None:
        self.repo.close()


def reproduce_stage(
    session: DvcSession,
    name: str,
    force: bool = False,
    on_line: LineSink | None = None,
    timeout_s: float | None = None,
    tail_lines: int = 20,
) -> StageOutcome:
    """Reproduce exactly one stage; cached stages cost one in-process check, no child process."""
    start = time.monotonic()
    if not force and not session.is_changed(name):
        if on_line is not None:
            on_line("stdout", f"Stage '{name}' didn't change, skipping")
        return StageOutcome(name, "cached", time.monotonic() - start)
    args = ["repro", "--single-item", *(["--force"] if force else []), name]
    try:
        result = run_dvc(args, session.root, on_line, timeout_s)
    finally:
        session.reset()
    command = "dvc " + " ".join(args)
    if result.timed_out:
        raise StageFailed(f"stage '{name}' timed out after {timeout_s:.0f} s and was killed ({command})")
    if result.returncode != 0:
        tail = "\n".join(result.lines[-tail_lines:])
        raise StageFailed(
            f"stage '{name}' failed (exit {result.returncode}): {failure_reason(result)}\n--- last output\n{tail}"
        )
    status = "restored" if any(RUN_CACHE_MARK in line for line in result.lines) else "ran"
    return StageOutcome(name, status, time.monotonic() - start, command)


def apply_param_overrides(root: Path, overrides: Sequence[str]) -> None:
    """Write `-S`-style overrides (`key=value`, `file:key=value`) into the params files, as `dvc exp run -S` does."""
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides

    for path, items in to_path_overrides(overrides).items():
        apply_overrides(root / path, items)


def exp_save(root: Path, name: str | None, include: Sequence[str] = (), on_line: LineSink | None = None) -> str:
    """Record the workspace (params, dvc.lock, metrics) as a DVC experiment; returns its name."""
    extra = [arg for path in include for arg in ("-I", path)]
    result = run_dvc(["exp", "save", *(["-n", name] if name else []), "--force", *extra], root, on_line)
    if result.returncode != 0:
        raise StageFailed(f"dvc exp save failed: {failure_reason(result)}")
    saved = [ln.rsplit(":", 1)[-1].strip() for ln in result.lines if "has been saved as" in ln]
    return name or (saved[-1] if saved else "")
