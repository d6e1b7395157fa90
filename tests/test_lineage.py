"""`ijepa lineage`: the chain from registry version to source files, and `--verify` on a real tiny pipeline
run: clean passes; one changed shard byte, manifest byte or encoder byte is reported as exactly that path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run
from tests.registry_helpers import ARTIFACT, flip_byte, ijepa, ijepa_process, project_copy, read_json


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = project_copy(tmp_path_factory, "lineage")
    ijepa(root, "registry", "register")
    ijepa(root, "registry", "promote", "--stage", "prod")
    return root


def verify_json(project: Path, *args: str) -> tuple[int, dict]:
    proc = ijepa(project, "lineage", "--verify", "--json", *args, check=False)
    assert proc.exit_code in (0, 1), proc.output
    return proc.exit_code, json.loads(proc.stdout)


def failed_subjects(report: dict) -> set[str]:
    return {c["subject"] for c in report["verify"]["failed"]}


@pytest.mark.slow
def test_clean_run_verifies_and_prints_the_chain(project: Path) -> None:
    proc = ijepa(project, "lineage", "--verify")
    tree = proc.stdout
    order = ["ijepa-encoder v0.1.0", "git commit", "encoder models/encoder.safetensors", "eval metrics",
             "pretrain params", "validation: success=True", "shards data/shards", "manifest data/manifest.csv",
             "source dataset fashion-mnist"]  # fmt: skip
    positions = [tree.find(label) for label in order]
    assert -1 not in positions and positions == sorted(positions), tree
    assert "stages: prod" in tree and "all hashes match" in tree

    rc, report = verify_json(project)
    entry = read_json(project / "registry/entry.json")
    assert rc == 0 and report["verify"]["ok"] and report["verify"]["failed"] == []
    subjects = {c["subject"] for c in report["verify"]["checks"]}
    shards = set(read_json(project / "reports/shard.json")["shard_sha256"])
    assert shards <= subjects and {"data/manifest.csv", "models/encoder.safetensors", "registry/entry.json"} <= subjects
    assert len([s for s in subjects if s.startswith("source:")]) == 4
    assert report["version"] == "v0.1.0" and report["stages"] == ["prod"] and report["revision"] == "workspace"
    assert report["encoder"]["sha256"] == entry["encoder"]["sha256"]
    assert report["pretrain_params"]["model"] == entry["params"]["model"]


@pytest.mark.slow
def test_version_and_stage_are_read_at_the_tag(project: Path) -> None:
    rc, report = verify_json(project, "--stage", "prod")
    tag_commit = run(["git", "rev-list", "-n1", f"{ARTIFACT}@v0.1.0"], project).stdout.strip()
    assert rc == 0 and report["version"] == "v0.1.0" and report["commit"] == tag_commit
    assert report["tag"] == f"{ARTIFACT}@v0.1.0" and report["revision"] == tag_commit
    unknown = ijepa(project, "lineage", "--version", "v9.9.9", check=False)
    assert unknown.exit_code == 1 and "no version v9.9.9" in unknown.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("target", "offset"),
    [("shard", 700), ("data/manifest.csv", 40), ("models/encoder.safetensors", -3)],
)
@pytest.mark.probe("lineage-verify")
def test_verify_reports_exactly_the_changed_file(project: Path, target: str, offset: int) -> None:
    shard = target == "shard"
    if shard:
        target = sorted(read_json(project / "reports/shard.json")["shard_sha256"])[1]
    path = project / target
    original = flip_byte(path, offset)
    try:
        rc, report = verify_json(project)
        text = ijepa_process(project, "lineage", "--verify", check=False) if shard else None
        at_tag = verify_json(project, "--version", "v0.1.0")[0] if shard else 0
    finally:
        path.write_bytes(original)
    assert rc == 1 and failed_subjects(report) == {target}
    details = " ".join(report["verify"]["failed"][0]["details"])
    assert "dvc.lock" in details and "sha256" in details
    if text is not None:
        assert text.returncode == 1 and f"MISMATCH {target}" in text.stdout and "1 mismatch(es)" in text.stdout
    assert at_tag == 0  # the tagged revision is read from the DVC cache, which the workspace edit did not touch
    assert verify_json(project)[0] == 0
