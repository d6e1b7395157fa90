"""Byte-reproducible outputs (docs/CONTRACTS.md): each stage's library function run twice on tiny data
writes the same bytes into every DVC-tracked output, and its timings into reports/timings/ only.

`make run` on a fresh clone then leaves dvc.lock and every committed output as they are. Library calls
on tiny data (no `dvc repro`): shard + validate, pretrain (two fresh runs and a killed-and-resumed one),
register. features and the eval reports: tests/test_eval_stages.py.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import DataParams, ModelParams, RegisterParams, TrainParams, ValidateParams
from pipeline.data.shards import shard_dataset
from pipeline.data.validation import run_validation
from pipeline.ijepa.paths import RunPaths
from pipeline.ijepa.train import pretrain
from tests.conftest import TINY
from tests.test_train import MASK, MODEL, TRAIN, make_root

PRETRAIN_OUTS = [
    "models/encoder.safetensors",
    "models/encoder.json",
    "models/snapshots",
    "models/checkpoints",
    "reports/pretrain.json",
    "reports/dvclive/plots/metrics",
]  # the outputs of stage pretrain (dvc.yaml)


def digests(root: Path, outs: list[str]) -> dict[str, str]:
    """sha256 of every file of the outputs `outs` under `root` (what DVC hashes into dvc.lock)."""
    out = {}
    for rel in outs:
        path = root / rel
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        assert files, f"{rel}: nothing written"
        out.update({p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files})
    return out


def read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.probe("validate-timings")
@pytest.mark.probe("byte-stable")
def test_shard_and_validate_outputs_are_byte_identical_and_timings_apart(
    tmp_path: Path, fake_fmnist: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = DataParams(root=str(fake_fmnist), **TINY["data"])
    checks = ValidateParams(**TINY["validate"])
    runs = []
    for name in ("a", "b"):
        root = tmp_path / name
        root.mkdir()
        monkeypatch.chdir(root)  # the stages' relative paths, as in two clones
        shard_dataset(params, Path("data/shards"), Path("data/manifest.csv"), Path("reports/shard.json"), workers=1)
        code, _ = run_validation(
            Path("data/shards"), Path("data/manifest.csv"), checks, Path("reports/validation.json"), None
        )  # no Data Docs: not an output
        assert code == 0
        runs.append(digests(root, ["data/shards", "data/manifest.csv", "reports/shard.json",
                                   "reports/validation.json"]))  # fmt: skip
        shard_t, valid_t = read(root / "reports/timings/shard.json"), read(root / "reports/timings/validation.json")
        assert shard_t["wall_s"] > 0 and shard_t["images_per_s"] > 0
        assert valid_t["wall_s"]["total"] > 0 and valid_t["s_per_10k_images"] > 0
        for report in ("shard", "validation"):
            assert not {"wall_s", "images_per_s", "s_per_10k_images"} & set(read(root / f"reports/{report}.json"))
    assert runs[0] == runs[1]


@pytest.mark.probe("byte-stable")
@pytest.mark.probe("kill-resume")
def test_pretrain_outputs_are_byte_identical_for_fresh_and_resumed_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # like a stage run: dvclive looks for a repo from the cwd

    def run(root: Path, stop_after: int | None = None) -> dict | None:
        return pretrain(MODEL, MASK, TrainParams(**TRAIN), RunPaths.under(root), stop_after=stop_after)

    roots = [make_root(tmp_path / name) for name in ("a", "b", "killed")]
    for i, root in enumerate(roots[:2]):
        random.seed(i), np.random.seed(i), torch.manual_seed(i)  # global RNGs as two fresh processes leave them
        assert run(root) is not None
    assert run(roots[2], stop_after=7) is None  # "killed" after step 7: resumes from the step-4 checkpoint
    resumed = run(roots[2])
    assert resumed is not None and resumed["resumed_from_step"] == 4
    fresh = digests(roots[0], PRETRAIN_OUTS)
    assert digests(roots[1], PRETRAIN_OUTS) == fresh
    assert digests(roots[2], PRETRAIN_OUTS) == fresh  # the resume leaves no trace in checkpoints or reports
    timing = read(roots[2] / "reports/timings/pretrain.json")
    assert timing["attempts"] == 2 and timing["resumed_from_step"] == 4 and timing["step"] == 12
    assert timing["wall_s"] > 0 and timing["images_per_s"] > 0 and timing["timed_from_step"] == 0


@pytest.mark.probe("byte-stable")
def test_register_entry_and_card_are_byte_identical(tmp_path: Path) -> None:
    from pipeline.ijepa.export import encoder_meta, random_encoder, save_encoder
    from pipeline.registry.entry import register_model

    meta = encoder_meta(ModelParams(embed_dim=32, depth=2, num_heads=2), {"mean": [0.5], "std": [0.2]})
    save_encoder(random_encoder(meta, seed=0), tmp_path / "models/encoder.safetensors", meta)
    reports = {"eval_linear": {"linear.test_top1": 0.9}, "eval_lowshot": {}, "pretrain": {"final_loss": 0.1},
               "validation": {"success": True}, "shard": {}}  # fmt: skip
    for name, report in reports.items():
        (tmp_path / "reports").mkdir(exist_ok=True)
        (tmp_path / f"reports/{name}.json").write_text(json.dumps(report))
    (tmp_path / "params.yaml").write_text("train: {lr: 0.001}\n")
    outs = ["registry/entry.json", "registry/model_card.md"]
    register_model(tmp_path, RegisterParams(enforce_gate=False))
    first = digests(tmp_path, outs)
    run_record = tmp_path / "reports/timings/register.json"
    run_record.unlink()
    entry = register_model(tmp_path, RegisterParams(enforce_gate=False))
    assert digests(tmp_path, outs) == first and "created_at" not in entry and "git" not in entry
    assert set(read(run_record)) == {"created_at", "git"}
