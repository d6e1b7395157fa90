"""The fault probes of issue 14: what a hostile but realistic user did to a full default run, and the
verdict of each, on small generated data.

Every probe is checked by tests marked `@pytest.mark.probe("<name>")`, most of them beside the code they
test (library calls on tiny data; a few through `dvc repro` or a stage process); the probes without such
a home are here. At the end of a session tests/conftest.py prints one line per probe: PASS (every marked
test that ran passed), FAIL, skipped or not run. The whole suite runs them all (CI); `python
bench/faults.py` runs only the probes (`pytest -m probe`).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest

from pipeline.ijepa.checkpoint import CheckpointError, checkpoint_name, digest_path, file_sha256, load_checkpoint

PROBES = {
    "checkpoint-bytes": "flipped bytes in the newest checkpoint: refused naming the file, nothing exported",
    "bad-lr": "train.lr -1 refused naming the field; an exploding loss stops, the last good checkpoint kept",
    "gate-fails": "a failed register gate writes nothing and deletes nothing; registered versions stay readable",
    "truncated-shard": "a truncated shard, then pretrain or features: one-line error naming the shard",
    "cut-shard": "a shard cut at a member boundary, or failed validation, pretrain run alone: refused",
    "empty-class": "an empty class dir: dropped and listed with on_corrupt: skip, else an error naming it",
    "disk-full": "disk full while checkpointing / exporting: one error naming the file, no temp file left",
    "corrupt-all": "on_corrupt: fail with several bad files: every one reported (up to the cap)",
    "shard-staging": "a failed or interrupted shard run leaves no data/shards.staging behind",
    "validate-timings": "validate twice: reports/validation.json byte-identical, timings in reports/timings/",
    "byte-stable": "every stage output byte-identical for the same inputs (make run leaves git status clean)",
    "kill-resume": "killed and resumed: the same encoder and checkpoint bytes as an uninterrupted run",
    "pickle-payload": "a pickle payload in a checkpoint with a matching digest: refused, never executed",
    "unsafe-tar": "a tar member with `..`, an absolute name or a link: refused naming the shard",
    "lineage-verify": "ijepa lineage --verify names exactly the changed file",
}


def verdicts(outcomes: dict[str, list[str]]) -> list[str]:
    """One line per probe from the outcomes (`passed`/`failed`/`skipped`) of the tests marked with it."""
    lines, passed = [], 0
    for name, text in PROBES.items():
        got = outcomes.get(name, [])
        if "failed" in got:
            verdict = "FAIL"
        elif "passed" in got:
            verdict, passed = "PASS", passed + 1
        else:
            verdict = "skipped" if got else "not run"
        tests = f"  ({got.count('passed')}/{len(got)} tests passed)" if got else ""
        lines.append(f"  {verdict:<7} {name:<16} {text}{tests}")
    return [f"fault probes (issue 14): {passed}/{len(PROBES)} pass", *lines]


def test_every_probe_is_checked_by_a_marked_test() -> None:
    sources = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    marked = set(re.findall(r"""pytest\.mark\.probe\(["']([\w-]+)["']\)""", sources))
    assert marked == set(PROBES), (set(PROBES) - marked, marked - set(PROBES))


class _Payload:
    def __reduce__(self) -> tuple:
        return (Path.touch, (Path("pwned"),))


@pytest.mark.probe("pickle-payload")
def test_a_pickle_payload_is_refused_and_never_executed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / checkpoint_name(4)
    path.write_bytes(pickle.dumps({"format": "ijepa-checkpoint/1", "step": _Payload()}))
    digest_path(path).write_text(f"{file_sha256(path)}  {path.name}\n")  # the attacker fixes the digest too
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))}: checkpoint is corrupt or unreadable"):
        load_checkpoint(path)  # weights_only: the unpickler refuses the callable
    assert not (tmp_path / "pwned").exists()
