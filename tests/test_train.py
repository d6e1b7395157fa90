"""Pretraining loop: learning, EMA, exact kill-and-resume, checkpoint safety, DDP under torchrun."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from webdataset import TarWriter

from pipeline.config import MaskParams, ModelParams, TrainParams
from pipeline.data.integrity import sha256_of
from pipeline.ijepa.checkpoint import CheckpointError, list_checkpoints
from pipeline.ijepa.distributed import Dist
from pipeline.ijepa.run_inputs import count_samples, read_normalization
from pipeline.ijepa.train import RunPaths, build, pretrain, train_step
from tests.fakes import class_images

ROOT = Path(__file__).resolve().parents[1]
MODEL = ModelParams(embed_dim=32, depth=2, num_heads=2, pred_embed_dim=16, pred_depth=1, pred_num_heads=2)
MASK = MaskParams()
TRAIN = dict(
    epochs=2,
    batch_size=16,
    num_workers=0,
    warmup_epochs=0.5,
    checkpoint_every=4,
    snapshots=2,
    log_every=2,
    augment_scale=(0.3, 1.0),
)


def make_root(root: Path, n_per_shard: int = 48, shards: int = 2) -> Path:
    """A project-like directory: data/shards/train/*.tar (contract format) + reports/validation.json."""
    out = root / "data/shards/train"
    out.mkdir(parents=True)
    labels = np.arange(n_per_shard * shards) % 10
    images = class_images(labels, seed=3)
    for s in range(shards):
        with TarWriter(str(out / f"train-{s:06d}.tar")) as tar:
            for i in range(s * n_per_shard, (s + 1) * n_per_shard):
                buf = io.BytesIO()
                Image.fromarray(images[i]).save(buf, format="PNG")
                tar.write(
                    {
                        "__key__": f"train-{i:07d}",
                        "png": buf.getvalue(),
                        "cls": str(labels[i]).encode(),
                        "json": json.dumps({"label": int(labels[i])}).encode(),
                    }
                )
    (root / "reports").mkdir()
    norm = {"mean": [float(images.mean() / 255)], "std": [float(images.std() / 255)]}
    (root / "reports/validation.json").write_text(json.dumps({"success": True, "normalization": norm}))
    write_shard_report(root)
    return root


def write_shard_report(root: Path) -> None:
    """reports/shard.json with the digests of the shards as they are now (what the `shard` stage records)."""
    digests = {p.relative_to(root).as_posix(): sha256_of(p) for p in sorted((root / "data/shards").rglob("*.tar"))}
    (root / "reports/shard.json").write_text(json.dumps({"shard_sha256": digests}))


def run(root: Path, stop_after: int | None = None, **train: object) -> dict | None:
    return pretrain(MODEL, MASK, TrainParams(**{**TRAIN, **train}), RunPaths.under(root), stop_after=stop_after)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), f"{a.name}: tensor {k} differs"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # like a stage run: dvclive looks for a repo from the cwd


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_root(tmp_path / "run")


def test_steps_reduce_loss_and_ema_target_moves(root: Path) -> None:
    params = TrainParams(**{**TRAIN, "lr": 2e-3, "start_lr": 2e-3, "final_lr": 2e-3, "augment_scale": None})
    tr = build(
        MODEL,
        MASK,
        params,
        read_normalization(root / "reports/validation.json"),
        count_samples(root / "data/shards/train"),
        torch.device("cpu"),
        Dist(),
    )
    target0 = {k: v.clone() for k, v in tr.model.target_encoder.state_dict().items()}
    images = torch.from_numpy(class_images(np.arange(16) % 10, seed=5)).float().div(255).unsqueeze(1)
    losses = [train_step(tr, images, step=0)[0].item() for _ in range(25)]  # same batch and masks
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3]), losses
    ctx, tgt = tr.model.context_encoder.state_dict(), tr.model.target_encoder.state_dict()
    moved = [k for k in tgt if not torch.equal(tgt[k], target0[k])]
    assert moved, "EMA never updated the target encoder"
    assert any(not torch.equal(ctx[k], tgt[k]) for k in moved), "target encoder equals the context encoder"


def test_run_writes_outputs(root: Path) -> None:
    report = run(root)
    assert report is not None and report["steps"] == 12 and report["epochs"] == 2
    assert report["device"] == "cpu" and report["images_per_s"] > 0 and 0 <= report["data_wait_fraction"] < 1
    meta = json.loads((root / "models/encoder.json").read_text())
    assert meta["step"] == 12 and meta["normalization"]["mean"]
    index = json.loads((root / "models/snapshots/index.json").read_text())
    assert [e["step"] for e in index] == [4, 8]
    assert all((root / "models/snapshots" / e["file"]).is_file() for e in index)
    assert [p.name for p in list_checkpoints(root / "models/checkpoints")] == [
        "ckpt-step0000008.pt",
        "ckpt-step0000012.pt",
    ]
    metrics = root / "reports/dvclive/plots/metrics"
    for name in (
        "loss",
        "lr",
        "wd",
        "momentum",
        "target_std",
        "effective_rank",
        "context_len",
    ):
        rows = (metrics / f"{name}.tsv").read_text().splitlines()
        assert rows[0] == f"step\t{name}" and len(rows) == 1 + 6, name
    assert not (metrics / "images_per_s.tsv").exists() and not (metrics / "data_wait_fraction.tsv").exists()
    assert not (root / "dvc.yaml").exists()
    saved = json.loads((root / "reports/pretrain.json").read_text())
    timings = json.loads((root / "reports/timings/pretrain.json").read_text())
    assert report == {**saved, **timings} and all(not isinstance(v, (dict, list)) for v in saved.values())
    assert not {"wall_s", "images_per_s", "peak_memory_mb", "resumed_from_step"} & set(saved)  # timings apart
    assert timings["step"] == 12 and timings["wall_s"] > 0 and timings["attempts"] == 1


@pytest.mark.probe("kill-resume")
def test_kill_and_resume_is_bit_exact(tmp_path: Path) -> None:
    a, b = make_root(tmp_path / "a"), make_root(tmp_path / "b")
    run(a)
    assert run(b, stop_after=7) is None  # "killed" after step 7; last checkpoint at step 4
    assert [p.name for p in list_checkpoints(b / "models/checkpoints")] == ["ckpt-step0000004.pt"]
    assert not (b / "models/encoder.safetensors").exists()
    report = run(b)
    assert report is not None and report["resumed_from_step"] == 4 and report["steps"] == 12
    assert_same_tensors(a / "models/encoder.safetensors", b / "models/encoder.safetensors")
    for snap in ("encoder-step0000004.safetensors", "encoder-step0000008.safetensors"):
        assert_same_tensors(a / "models/snapshots" / snap, b / "models/snapshots" / snap)
    final_a = torch.load(a / "models/checkpoints/ckpt-step0000012.pt", weights_only=True)
    final_b = torch.load(b / "models/checkpoints/ckpt-step0000012.pt", weights_only=True)
    for k, v in final_a["model"].items():
        assert torch.equal(v, final_b["model"][k]), k
    loss = "reports/dvclive/plots/metrics/loss.tsv"
    assert (a / loss).read_text() == (b / loss).read_text()
    # a rerun of a finished run trains nothing and re-exports the same encoder
    again = run(b)
    assert again is not None and again["resumed_from_step"] == 12
    assert_same_tensors(a / "models/encoder.safetensors", b / "models/encoder.safetensors")


def test_corrupt_checkpoint_is_a_clear_error(root: Path) -> None:
    run(root, stop_after=5)
    [latest] = list_checkpoints(root / "models/checkpoints")
    latest.write_bytes(latest.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"ckpt-step0000004\.pt.*corrupt"):
        run(root)


def test_changed_params_refuse_unfinished_and_restart_finished(root: Path) -> None:
    run(root, stop_after=5)
    with pytest.raises(
        CheckpointError,
        match=r"(?s)ckpt-step0000004\.pt.*train\.lr: checkpoint 0\.0003, now 0\.002"
        r".*train\.resume=false",
    ):
        run(root, lr=0.002)
    with pytest.raises(CheckpointError, match="model.embed_dim"):
        pretrain(MODEL.model_copy(update={"embed_dim": 64}), MASK, TrainParams(**TRAIN), RunPaths.under(root))
    report = run(root, lr=0.002, resume=False)  # explicit fresh start
    assert report is not None and report["resumed_from_step"] == 0
    report = run(root, lr=0.003)  # finished run under other params: a new run, no error
    assert report is not None and report["resumed_from_step"] == 0 and report["steps"] == 12


def test_missing_normalization_is_a_clear_error(root: Path) -> None:
    (root / "reports/validation.json").write_text(json.dumps({"success": True}))
    with pytest.raises(KeyError, match="normalization"):
        run(root)


def write_params(root: Path, **train: object) -> None:
    params = {
        "model": MODEL.model_dump(mode="json"),
        "mask": MASK.model_dump(mode="json"),
        "train": TrainParams(**{**TRAIN, **train}).model_dump(mode="json"),
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def stage_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_torchrun_two_processes_write_one_checkpoint(root: Path) -> None:
    write_params(root, epochs=1, checkpoint_every=1000)
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "stages.pretrain"],
        cwd=root,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [p.name for p in list_checkpoints(root / "models/checkpoints")] == ["ckpt-step0000003.pt"]
    report = json.loads((root / "reports/pretrain.json").read_text())
    assert report["world_size"] == 2 and report["steps"] == 3  # 96 images / (16 x 2)
    assert (root / "models/encoder.safetensors").is_file()
