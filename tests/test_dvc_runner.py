"""flows/dvc_runner.run_dvc stops a stage promptly even when this process ignores SIGINT."""

from __future__ import annotations

import signal
from pathlib import Path

from flows.dvc_runner import run_dvc
from tests.mini_project import make_mini_project, set_param


def test_timeout_stops_the_stage_although_sigint_is_ignored_here(tmp_path: Path) -> None:
    project = make_mini_project(tmp_path / "mini")
    set_param(project, "train", "sleep", 2.0)  # 4 steps x 2 s
    assert run_dvc(["repro", "--single-item", "prepare"], project).returncode == 0
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by children, as from `cmd &` in a script
    try:
        result = run_dvc(["repro", "--single-item", "train"], project, timeout_s=3.0)
    finally:
        signal.signal(signal.SIGINT, old)
    assert result.timed_out and result.returncode != 0
    assert result.seconds < 7.0  # SIGINT worked: no 10 s grace period, and the stage did not run to its end
    assert "train" not in (project / "dvc.lock").read_text()  # the interrupted stage was not committed
