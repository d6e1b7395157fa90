"""`ijepa export --format transformers`: an IJepaModel directory that loads offline and gives our features."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.config import ModelParams
from pipeline.export_transformers import RECORD, ExportError, export_transformers, hf_state_dict
from pipeline.ijepa.export import encoder_meta, load_encoder, random_encoder, save_encoder
from tests.conftest import VENV_BIN, project_env

pytest.importorskip("transformers")

NORM = {"mean": [0.29], "std": [0.35]}


def encoder(tmp_path: Path, **model: object) -> Path:
    """A saved encoder whose weights are far from init (sharp attention, so a wrong mapping shows)."""
    params = ModelParams(img_size=28, patch_size=4, embed_dim=48, depth=2, num_heads=3, **model)
    vit = random_encoder(encoder_meta(params, NORM, step=7), seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if name != "pos_embed":  # keep the (scaled) sin-cos table as pretraining stores it
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    return save_encoder(vit, tmp_path / "models" / "encoder.safetensors", vit.ijepa_meta)


CHECK = r"""
import json, sys, torch
from transformers import IJepaModel
from pipeline.ijepa.export import load_encoder
ours = load_encoder(sys.argv[1])
hf = IJepaModel.from_pretrained(sys.argv[2], local_files_only=True).eval()
m = ours.ijepa_meta["normalization"]
x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
x = (x - m["mean"][0]) / m["std"][0]
with torch.no_grad():
    a, b = ours(x), hf(pixel_values=x).last_hidden_state.mean(dim=1)
print(json.dumps({"max_abs_diff": float((a - b).abs().max()), "scale": float(a.abs().max()),
                  "eps": hf.config.layer_norm_eps, "ours_eps": ours.norm.eps, "shape": list(b.shape)}))
"""


def no_network() -> list[str]:
    unshare = shutil.which("unshare")
    ok = unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0
    return [unshare, "-n"] if ok else []


def test_cli_export_loads_offline_with_equal_features(tmp_path: Path) -> None:
    weights = encoder(tmp_path, pos_embed_scale=0.5)
    out = tmp_path / "hf-encoder"
    env = {**project_env(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cli = [str(Path(VENV_BIN) / "ijepa"), "export", "--format", "transformers", str(out), "--encoder", str(weights)]
    proc = subprocess.run([*no_network(), *cli], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", RECORD, "model.safetensors"]
    record = json.loads((out / RECORD).read_text())
    assert record["normalization"] == NORM and record["step"] == 7 and record["check"]["pooled_max_abs_diff"] <= 1e-5
    check = subprocess.run([*no_network(), sys.executable, "-c", CHECK, str(weights), str(out)], env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert check.returncode == 0, check.stderr
    result = json.loads(check.stdout.strip().splitlines()[-1])
    assert result["shape"] == [4, 48] and result["scale"] > 0.1
    assert result["max_abs_diff"] <= 1e-5, result
    assert result["eps"] == result["ours_eps"] == 1e-6


def test_patch_layernorm_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    vit = load_encoder(encoder(tmp_path, patch_norm=True))
    with pytest.raises(ExportError, match=r"LayerNorm after the patch projection \(model.patch_norm"):
        export_transformers(vit, tmp_path / "out", source="patch-norm encoder")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_a_wrong_weight_mapping_is_caught_before_anything_is_written(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from pipeline import export_transformers as module

    def swapped(vit: torch.nn.Module) -> dict:
        sd = hf_state_dict(vit)
        for key in [k for k in sd if ".attention.attention.query." in k]:
            other = key.replace(".query.", ".key.")
            sd[key], sd[other] = sd[other], sd[key]
        return sd

    monkeypatch.setattr(module, "hf_state_dict", swapped)
    with pytest.raises(ExportError, match="features differ from ours"):
        export_transformers(load_encoder(encoder(tmp_path)), tmp_path / "out", source="swapped")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_an_earlier_export_is_replaced_but_other_files_are_kept(tmp_path: Path) -> None:
    vit = load_encoder(encoder(tmp_path))
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty and not an earlier export"):
        export_transformers(vit, foreign, source="x")
    assert (foreign / "todo.txt").read_text() == "mine"
    out = tmp_path / "hf"
    export_transformers(vit, out, source="first")
    (out / "stale.bin").write_bytes(b"old")
    record = export_transformers(vit, out, source="second")
    assert record["source"] == "second" and not (out / "stale.bin").exists()
    assert json.loads((out / "config.json").read_text())["model_type"] == "ijepa"
