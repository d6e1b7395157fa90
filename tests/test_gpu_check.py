"""bench/gpu_check.sh on a machine without CUDA: argument handling, the dry run, the skip; and its
measuring code (bench/gpu_bench.py) run tiny on the CPU, including DDP under torchrun (gloo)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, project_env
from tests.fakes import fake_fashion_mnist

SCRIPT = ROOT / "bench" / "gpu_check.sh"
BENCH = ROOT / "bench" / "gpu_bench.py"
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")


def check(*args: str) -> subprocess.CompletedProcess:
    env = {**project_env(), "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_without_cuda_it_skips_clearly_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "gpu.md"
    proc = check("--out", str(out))
    assert proc.returncode == 0
    assert "SKIPPED: no CUDA device" in proc.stdout and "no GPU figure was measured" in proc.stdout
    assert not out.exists()
    plan = check("--dry-run", "--budget", "240", "--skip-compile")
    assert plan.returncode == 0 and "0 CUDA device(s)" in plan.stdout and "budget 240s" in plan.stdout
    assert "--compile" not in plan.stdout and "dvc repro of the default pipeline" in plan.stdout
    for bad, message in ((["--budget", "60"], "at least 120"), (["--batch", "x"], "whole number"),
                         (["--frobnicate"], "unknown argument")):  # fmt: skip
        proc = check(*bad)
        assert proc.returncode == 2 and message in proc.stderr, (bad, proc.stderr)


def gpu_bench():  # noqa: ANN201 - the bench/gpu_bench.py module
    spec = importlib.util.spec_from_file_location("gpu_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench(tmp: Path, name: str, *args: str, capsys: pytest.CaptureFixture, torchrun: bool = False) -> dict:
    """One sub-command's JSON line (in this process; DDP under a real torchrun), saved for `render`."""
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(BENCH), *args]
        proc = subprocess.run(cmd, cwd=tmp, env=project_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        out = proc.stdout
    else:
        capsys.readouterr()
        assert gpu_bench().main(list(args)) == 0
        out = capsys.readouterr().out
    line = [ln for ln in out.splitlines() if ln.startswith("{")][-1]
    (tmp / f"{name}.json").write_text(line + "\n")
    return json.loads(line)


@pytest.mark.slow
def test_measurements_run_tiny_on_cpu_and_render_a_section(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    tiny = ["--device", "cpu", "--tiny", "--precision", "fp32", "--batch", "8", "--steps", "2", "--warmup", "1"]
    train = bench(tmp_path, "1-train", "train", *tiny, "--peak-tflops", "0.5", capsys=capsys)
    assert train["kind"] == "train" and train["images_per_s"] > 0 and train["flops_per_image"] > 0
    assert train["mfu"] == pytest.approx(train["flops_per_image"] * train["images_per_s"] / 0.5e12, rel=0.05, abs=1e-4)
    ddp = bench(tmp_path, "3-ddp", "ddp", *tiny, capsys=capsys, torchrun=True)
    assert ddp["kind"] == "ddp" and ddp["world"] == 2 and ddp["images_per_s"] > 0
    loader = bench(tmp_path, "4-loader", "loader", "--images", "48", "--workers", "1", "--batch", "8", "--batches", "2",
                   capsys=capsys)  # fmt: skip
    assert loader["images"] == 16 and loader["workers"] == 1
    data = fake_fashion_mnist(tmp_path / "fmnist", n_train=60, n_test=20)
    project = bench(tmp_path, "project", "project", str(tmp_path / "copy"), "--data", str(data), capsys=capsys)
    copy = Path(project["dest"])
    assert not project["fake_data"] and (copy / ".dvc").is_dir() and (copy / "dvc.yaml").is_file()
    assert str(data) in (copy / "params.yaml").read_text()
    (tmp_path / "project.json").unlink()
    assert gpu_bench().main(["render", str(tmp_path), "--machine", "CPU smoke"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("## GPU check (bench/gpu_check.sh)") and "| what | figure | notes |" in md
    assert f"| training, eager | {train['images_per_s']:,.0f} images/s |" in md
    assert "| nccl DDP, 2 GPU(s) |" in md and "| MFU, eager | " in md and "| training, torch.compile | n/a" in md
