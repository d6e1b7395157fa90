"""Stages features → eval_linear → eval_lowshot on generated shards and a tiny encoder, in a temp dir."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

import pipeline.eval.report as report_module
from pipeline.config import DataParams, ModelParams
from pipeline.data.shards import write_shards
from pipeline.data.sources import load_source
from pipeline.eval.features import FeatureSet, read_index
from pipeline.ijepa.export import encoder_meta, random_encoder, save_encoder
from stages import eval_linear, eval_lowshot, features
from tests.fakes import fake_fashion_mnist

EVAL = {"batch_size": 64, "max_train": 200, "snapshot_max_images": 40, "c_grid": [0.1, 1.0], "lowshot_k": [1, 5],
        "lowshot_seeds": 2, "lowshot_percent": 10.0, "knn_k": [5, 20], "precision": "fp32"}  # fmt: skip
TINY = ModelParams(embed_dim=32, depth=2, num_heads=2)


def make_inputs(root: Path, data_root: Path) -> None:
    data = DataParams(root=str(data_root), val_size=60, shard_max_count=100)
    written = write_shards(load_source(data), data, root / "data/shards", root / "data/manifest.csv", workers=1)
    norm = {"mean": [0.43], "std": [0.2]}
    (root / "reports").mkdir(parents=True, exist_ok=True)  # what the features stage's input gate reads
    (root / "reports/shard.json").write_text(json.dumps({"shard_sha256": written.shard_sha256}))
    (root / "reports/validation.json").write_text(json.dumps({"success": True, "normalization": norm}))
    final = encoder_meta(TINY, norm, step=30, epoch=1)
    save_encoder(random_encoder(final, seed=7), root / "models/encoder.safetensors", final)
    index = []
    for step in (10, 20):
        name = f"encoder-step{step:07d}.safetensors"
        save_encoder(random_encoder(final, seed=step), root / "models/snapshots" / name, {**final, "step": step})
        index.append({"file": name, "step": step, "epoch": 0, "wall_s": float(step)})
    (root / "models/snapshots/index.json").write_text(json.dumps(index))
    (root / "params.yaml").write_text(yaml.safe_dump({"eval": EVAL}))


def documented_keys(report: dict) -> list[str]:
    """Concrete keys the report.py docstring promises, templates expanded with the test's params."""
    doc = report_module.__doc__ or ""
    keys = []
    for tok in re.findall(r"(?<![/\w])(?:linear|knn|lowshot|features|encoder)\.[\w.<>]+", doc):
        keys += [
            tok.replace("<i>", str(i)).replace("<k>", str(k)).replace("<p>", "10")
            for i in (range(10) if "<i>" in tok else [0])
            for k in (EVAL["knn_k"] if tok.startswith("knn") else EVAL["lowshot_k"])
        ]
    keys = sorted(set(keys))
    accuracy = [
        k for k in report if re.fullmatch(r"(linear\.(val|test)_top[15]|knn\.k\d+\.test_top1|lowshot\..+\.mean)", k)
    ]
    keys += [f"{kind}.{b}.{k}" for kind in ("baseline", "delta") for b in ("raw", "random") for k in accuracy]
    return keys


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("evalproj")
    make_inputs(root, fake_fashion_mnist(tmp_path_factory.mktemp("fm"), n_train=500, n_test=150))
    return root


@pytest.mark.probe("byte-stable")
def test_eval_stages_end_to_end(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    assert eval_linear.main() == 1  # no features yet: a clear error, not a traceback
    assert features.main() == 0
    index = read_index("data/features")
    assert index["sets"]["encoder"]["count"] == {"train": 200, "val": 60, "test": 150}
    assert index["sets"]["raw_pixels"]["dim"] == 784 and index["sets"]["random_init"]["dim"] == 32
    snap = FeatureSet.load(Path("data/features/snapshots/step0000010/train.npz"))
    enc = FeatureSet.load(Path("data/features/encoder/train.npz"))
    assert len(snap) == 40 and set(snap.keys) <= set(enc.keys)
    assert enc.keys.tolist() == sorted(enc.keys.tolist())  # shard (manifest) order, only kept samples read
    assert eval_linear.main() == 0 and eval_lowshot.main() == 0
    outs = ["reports/eval_linear.json", "reports/eval_lowshot.json", "reports/plots/accuracy_vs_step.csv",
            "reports/plots/lowshot.csv"]  # fmt: skip
    first = {p: Path(p).read_bytes() for p in outs}
    assert eval_linear.main() == 0 and eval_lowshot.main() == 0  # same features: the same bytes, timings apart
    assert {p: Path(p).read_bytes() for p in outs} == first
    for name in ("eval_linear", "eval_lowshot"):
        assert json.loads(Path(f"reports/timings/{name}.json").read_text())["wall_s"] > 0

    lin = json.loads(Path("reports/eval_linear.json").read_text())
    low = json.loads(Path("reports/eval_lowshot.json").read_text())
    merged = {**lin, **low}
    missing = [k for k in documented_keys(merged) if k not in merged]
    assert not missing, missing
    for key, value in merged.items():
        if re.search(r"(top[15]|\.mean|\.std)$", key) and not key.startswith("delta."):
            assert 0.0 <= value <= 1.0, (key, value)
    assert lin["delta.raw.linear.test_top1"] == pytest.approx(
        lin["linear.test_top1"] - lin["baseline.raw.linear.test_top1"], abs=1e-4
    )
    assert lin["linear.fit_split"] == "train" and lin["features.train_size"] == 200
    assert low["lowshot.pct10.train_size"] == 44  # 10 % of the 440-image train split, not of the 200 cached
    assert "baseline.raw.linear.class0.test_top1" not in lin  # per-class detail is encoder-only

    with open("reports/plots/lowshot.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["k", "encoder", "random_init", "raw_pixels"] and [r["k"] for r in rows] == ["1", "5"]
    assert float(rows[1]["encoder"]) == low["lowshot.k5.mean"]
    with open("reports/plots/accuracy_vs_step.csv") as fh:
        curve = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in curve] == [10, 20, 30]
    assert all(0 <= float(r["linear_test_top1"]) <= 1 for r in curve)


def _tree_digests(root: Path) -> dict[str, str]:
    files = sorted(f for f in root.rglob("*") if f.is_file())
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.mark.probe("byte-stable")
def test_reextraction_gives_a_byte_identical_cache(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same inputs -> same data/features and report bytes (DVC then skips the eval stages); timings apart."""
    monkeypatch.chdir(project)
    assert features.main() == 0
    first = _tree_digests(Path("data/features"))
    first_report = Path("reports/features.json").read_bytes()
    snap_index = Path("models/snapshots/index.json")
    entries = json.loads(snap_index.read_text())
    snap_index.write_text(json.dumps([{**e, "wall_s": e["wall_s"] + 1.5} for e in entries]))  # a re-run's timings
    assert features.main() == 0
    assert _tree_digests(Path("data/features")) == first and len(first) == 3 * 5 + 1  # 5 sets x 3 splits + index
    report = json.loads(Path("reports/features.json").read_text())
    assert report["sets"] == 5 and report["snapshots"] == 2 and report["train_size"] == 200
    assert report["encoder_images"] > 0 and Path("reports/features.json").read_bytes() == first_report
    assert "wall_s" not in read_index("data/features") and "wall_s" not in report
    assert json.loads(Path("reports/timings/features.json").read_text())["wall_s"] > 0


def test_features_change_when_the_encoder_file_changes(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    if not Path("data/features/index.json").exists():
        assert features.main() == 0
    before = FeatureSet.load(Path("data/features/encoder/val.npz"))
    meta = json.loads(Path("models/encoder.json").read_text())
    save_encoder(random_encoder(meta, seed=99), Path("models/encoder.safetensors"), meta)
    assert features.main() == 0
    after = FeatureSet.load(Path("data/features/encoder/val.npz"))
    random_init = FeatureSet.load(Path("data/features/random_init/val.npz"))
    assert np.array_equal(before.keys, after.keys)
    assert np.abs(before.features - after.features).mean() > 1e-2
    assert not np.allclose(after.features, random_init.features)  # baseline seed 0 is a different init
