"""Stage `register` (quality gate, entry, model card) and `ijepa registry` (gto tags, DVC materialisation)
on a real tiny pipeline run in a temp git+DVC repo; the gate logic itself also on plain dicts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

import pipeline
from pipeline.config import RegisterParams
from pipeline.registry.gate import evaluate_gate
from pipeline.registry.records import load_yaml, lock_outs
from tests.conftest import dvc, run, set_params
from tests.registry_helpers import ARTIFACT, ijepa, project_copy, read_json, sha256

LINEAR = {"linear.test_top1": 0.80, "baseline.random.linear.test_top1": 0.70, "baseline.raw.linear.test_top1": 0.85}


def test_gate_names_every_unmet_threshold() -> None:
    params = RegisterParams(min_linear_top1=0.9, min_margin_over_random=0.05, min_margin_over_raw=0.0)
    checks = evaluate_gate(params, LINEAR, {"success": False})
    by_param = {c.param: c for c in checks}
    assert {p for p, c in by_param.items() if not c.passed} == {
        "register.min_linear_top1", "register.min_margin_over_raw", "register.require_validation"}  # fmt: skip
    assert by_param["register.min_margin_over_random"].observed == pytest.approx(0.10)
    assert by_param["register.min_margin_over_raw"].observed == pytest.approx(-0.05)
    assert "observed 0.8000, required >= 0.9000" in by_param["register.min_linear_top1"].describe()


def test_gate_skips_unset_thresholds_and_fails_missing_metrics() -> None:
    params = RegisterParams(min_margin_over_random=None, min_margin_over_raw=None, require_validation=False)
    assert [c.param for c in evaluate_gate(params, LINEAR, None)] == ["register.min_linear_top1"]
    checks = evaluate_gate(RegisterParams(), {"linear.test_top1": 0.8}, {"success": True})
    missing = [c for c in checks if not c.passed]
    assert [c.param for c in missing] == ["register.min_margin_over_random"] and missing[0].observed is None


def test_gate_margin_can_be_taken_on_a_lowshot_metric() -> None:
    metrics = {**LINEAR, "lowshot.k10.mean": 0.57, "baseline.random.lowshot.k10.mean": 0.40,
               "baseline.raw.lowshot.k10.mean": 0.71}  # fmt: skip
    params = RegisterParams(
        min_linear_top1=0.7, margin_metric="lowshot.k10.mean", min_margin_over_random=0.08, min_margin_over_raw=0.0
    )
    by_param = {c.param: c for c in evaluate_gate(params, metrics, {"success": True})}
    assert by_param["register.min_linear_top1"].observed == pytest.approx(0.80)  # still on `metric`
    rand, raw = by_param["register.min_margin_over_random"], by_param["register.min_margin_over_raw"]
    assert rand.passed and rand.observed == pytest.approx(0.17) and "lowshot.k10.mean over random-init" in rand.name
    assert not raw.passed and raw.observed == pytest.approx(-0.14)
    params = RegisterParams(margin_metric="lowshot.k25.mean", min_margin_over_random=0.0, min_margin_over_raw=None)
    missing = [c for c in evaluate_gate(params, metrics, {"success": True}) if not c.passed]
    assert [c.param for c in missing] == ["register.min_margin_over_random"] and missing[0].observed is None


def test_gate_refuses_a_collapsed_encoder_naming_the_effective_rank() -> None:
    params = RegisterParams(min_effective_rank=5.0, min_margin_over_random=None, require_validation=False)
    collapsed = {**LINEAR, "collapse.effective_rank": 1.3}
    unmet = [c for c in evaluate_gate(params, collapsed, None) if not c.passed]
    assert [c.param for c in unmet] == ["register.min_effective_rank"]
    assert "effective rank" in unmet[0].name and "observed 1.3000, required >= 5.0000" in unmet[0].describe()
    assert all(c.passed for c in evaluate_gate(params, {**LINEAR, "collapse.effective_rank": 9.5}, None))
    missing = [c for c in evaluate_gate(params, LINEAR, None) if not c.passed]  # no rank in the report: fails
    assert [c.param for c in missing] == ["register.min_effective_rank"] and missing[0].observed is None


@pytest.mark.probe("gate-fails")
def test_a_failed_register_writes_nothing_and_deletes_nothing(tmp_path: Path) -> None:
    from pipeline.config import ModelParams
    from pipeline.ijepa.export import encoder_meta, random_encoder, save_encoder
    from pipeline.registry.entry import RegistryInputError, register_model
    from pipeline.registry.gate import GateFailed

    registry = tmp_path / "registry"
    registry.mkdir()
    previous = {"entry.json": b'{"format": "ijepa-registry-entry/1"}\n', "model_card.md": b"# the last good model\n"}
    for name, data in previous.items():
        (registry / name).write_bytes(data)
    with pytest.raises(RegistryInputError, match="models/encoder.safetensors: not found"):
        register_model(tmp_path, RegisterParams())
    meta = encoder_meta(ModelParams(embed_dim=32, depth=2, num_heads=2), {"mean": [0.5], "std": [0.2]})
    save_encoder(random_encoder(meta, seed=0), tmp_path / "models/encoder.safetensors", meta)
    (tmp_path / "reports").mkdir()
    reports = {"eval_linear": LINEAR, "eval_lowshot": {}, "pretrain": {}, "validation": {"success": True}}
    for name, report in reports.items():
        (tmp_path / f"reports/{name}.json").write_text(json.dumps(report))
    with pytest.raises(GateFailed, match="register.min_linear_top1"):
        register_model(tmp_path, RegisterParams(min_linear_top1=0.99))
    assert {p.name: p.read_bytes() for p in registry.iterdir()} == previous


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return project_copy(tmp_path_factory, "registry")


@pytest.mark.slow
def test_gate_passes_entry_and_card(project: Path) -> None:
    entry = read_json(project / "registry/entry.json")
    lock = load_yaml((project / "dvc.lock").read_text())
    outs = lock_outs(lock)
    shard = read_json(project / "reports/shard.json")
    enc = entry["encoder"]
    assert entry["artifact"] == ARTIFACT and entry["gate"]["passed"] is True
    assert enc["sha256"] == sha256(project / "models/encoder.safetensors")
    assert enc["size"] == (project / "models/encoder.safetensors").stat().st_size
    assert enc["md5"] == outs["models/encoder.safetensors"]["md5"]
    assert entry["architecture"] == read_json(project / "models/encoder.json")
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert entry["params"] == {s: params[s] for s in ("data", "model", "mask", "train", "eval")}
    assert entry["metrics"]["eval_linear"] == read_json(project / "reports/eval_linear.json")
    assert entry["metrics"]["eval_lowshot"] == read_json(project / "reports/eval_lowshot.json")
    data = entry["data"]
    assert data["shards"]["dvc_md5"] == outs["data/shards"]["md5"] and data["shards"]["sha256"] == shard["shard_sha256"]
    assert data["manifest"] == {"path": "data/manifest.csv", "md5": outs["data/manifest.csv"]["md5"],
                                "sha256": shard["manifest_sha256"]}  # fmt: skip
    src = entry["source"]
    assert src["name"] == "fashion-mnist" and src["hashed"] and len(src["files"]) == 4
    for name, digest in src["files"].items():
        assert sha256(Path(src["root"]) / name) == digest
    assert "git" not in entry and "created_at" not in entry  # run facts: reports/timings/register.json
    assert len(read_json(project / "reports/timings/register.json")["git"]["commit"]) == 40
    assert [c["param"] for c in entry["gate"]["checks"]] == [
        "register.min_linear_top1", "register.min_margin_over_random", "register.min_margin_over_raw",
        "register.require_validation"]  # fmt: skip
    card = (project / "registry/model_card.md").read_text()
    for text in ("## What it is", "## How it was trained", "## Results", "## Intended use and limits",
                 "## How to load it", "timm.create_model(", "load_state_dict(safetensors.torch.load_file(",
                 "pipeline.load_encoder(", "| raw pixels |", enc["sha256"]):  # fmt: skip
        assert text in card, text
    lin = entry["metrics"]["eval_linear"]
    assert f"| linear probe, test top-1 | {100 * lin['linear.test_top1']:.2f} % |" in card
    figures = re.findall(r"!\[[^\]]+\]\((figures/\w+\.png)\)", card)  # rendered by the `report` stage
    assert len(figures) == 4 and all((project / "registry" / f).stat().st_size > 0 for f in figures)
    assert "IJepaModel.from_pretrained(" in card


@pytest.mark.slow
def test_register_promote_show_get(project: Path) -> None:
    assert "no registered versions" in ijepa(project, "registry", "list").stdout
    out = ijepa(project, "registry", "register").stdout
    assert f"{ARTIFACT}@v0.1.0" in out
    ijepa(project, "registry", "promote", "--stage", "prod")
    tags = run(["git", "tag", "-l"], project).stdout.split()
    assert tags == [f"{ARTIFACT}#prod#1", f"{ARTIFACT}@v0.1.0"]
    head = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert run(["git", "rev-list", "-n1", f"{ARTIFACT}@v0.1.0"], project).stdout.strip() == head

    shown = ijepa(project, "registry", "show").stdout
    assert "v0.1.0" in shown and "prod" in shown and "passed" in shown
    rows = json.loads(ijepa(project, "registry", "show", "--json").stdout)
    entry = read_json(project / "registry/entry.json")
    assert [(r["version"], r["stages"], r["gate_passed"]) for r in rows] == [("v0.1.0", ["prod"], True)]
    assert rows[0]["metrics"]["linear.test_top1"] == entry["metrics"]["eval_linear"]["linear.test_top1"]
    detail = json.loads(ijepa(project, "registry", "show", "--stage", "prod", "--json").stdout)
    assert detail["entry"] == entry

    again = ijepa(project, "registry", "register", check=False)
    assert again.exit_code == 1 and "already registered" in again.stderr
    path = Path(ijepa(project, "registry", "get", "--stage", "prod").stdout.strip())
    assert path == project / ".ijepa/registry-cache/v0.1.0/encoder.safetensors"
    assert sha256(path) == entry["encoder"]["sha256"] and (path.parent / "encoder.json").is_file()
    # the static `artifacts:` declaration lets plain DVC fetch the same version by its gto tag
    dvc(project, "artifacts", "get", ".", ARTIFACT, "--rev", "v0.1.0", "-o", str(project.parent / "dvc-get.bin"))
    assert sha256(project.parent / "dvc-get.bin") == entry["encoder"]["sha256"]


@pytest.mark.slow
def test_registered_encoder_loads_in_plain_timm(project: Path) -> None:
    if not run(["git", "tag", "-l"], project).stdout.strip():  # when run on its own
        ijepa(project, "registry", "register")
        ijepa(project, "registry", "promote", "--stage", "prod")
    path = Path(ijepa(project, "registry", "get", "--version", "v0.1.0").stdout.strip())
    meta = read_json(path.with_suffix(".json"))
    kw = meta["timm_kwargs"]
    plain = timm.create_model("vit_small_patch16_224", pretrained=False, **kw)
    plain.load_state_dict(load_file(str(path)), strict=True)
    ours = pipeline.load_encoder("prod", repo=project)
    assert isinstance(ours, VisionTransformer) and ours.ijepa_meta == meta
    x = torch.rand(4, kw["in_chans"], kw["img_size"], kw["img_size"])
    with torch.no_grad():
        a, b = plain.eval().forward_features(x), ours.forward_features(x)
        pooled = pipeline.load_encoder(f"{ARTIFACT}@v0.1.0", repo=project)(x)
    assert a.shape == (4, meta["grid"][0] * meta["grid"][1], kw["embed_dim"])
    assert torch.equal(a, b) and torch.equal(plain(x), pooled)


@pytest.mark.slow
@pytest.mark.probe("gate-fails")
def test_gate_failure_writes_nothing_and_prod_needs_a_passed_gate(project: Path) -> None:
    if not run(["git", "tag", "-l", f"{ARTIFACT}@v0.1.0"], project).stdout.strip():  # when run on its own
        ijepa(project, "registry", "register")
    registry = {name: (project / "registry" / name).read_bytes() for name in ("entry.json", "model_card.md")}
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["register"]
    set_params(project, {"register": {"min_linear_top1": 0.999, "min_margin_over_random": 0.5, "enforce_gate": True}})
    failed = dvc(project, "repro", "register", check=False)
    assert failed.returncode != 0
    out = failed.stdout + failed.stderr
    assert "quality gate failed" in out
    assert "linear.test_top1: observed" in out and "required >= 0.9990 (register.min_linear_top1) [UNMET]" in out
    assert "required >= 0.5000 (register.min_margin_over_random) [UNMET]" in out
    assert "register.min_margin_over_raw" not in out  # met thresholds are not reported as failures
    # nothing written, nothing deleted (DVC does not remove the persisted, uncached outs before the run), and
    # the failed stage is not recorded: its dvc.lock entry unchanged, `dvc status` still shows it as changed
    # (the upstream `report` stage reads the thresholds too and rightly records the failed gate)
    assert {name: (project / "registry" / name).read_bytes() for name in registry} == registry
    assert yaml.safe_load((project / "dvc.lock").read_text())["stages"]["register"] == lock
    assert read_json(project / "reports/headline.json")["gate"]["passed"] is False
    assert "register" in dvc(project, "status", "register").stdout
    assert run(["git", "status", "--porcelain", "registry"], project).stdout == ""
    # earlier versions stay readable through gto and the registry commands
    listed = json.loads(ijepa(project, "registry", "list", "--json").stdout)
    assert "v0.1.0" in [v["version"] for v in listed]
    shown = json.loads(ijepa(project, "registry", "show", "--version", "v0.1.0", "--json").stdout)
    assert shown["entry"]["gate"]["passed"] is True
    assert Path(ijepa(project, "registry", "get", "--version", "v0.1.0").stdout.strip()).is_file()

    # a recorded (not enforced) failure can be registered and staged, never promoted to prod
    set_params(project, {"register": {"enforce_gate": False}})
    dvc(project, "repro", "register")
    assert read_json(project / "registry/entry.json")["gate"]["passed"] is False
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "gate recorded as failed"], project)
    registered = ijepa(project, "registry", "register").stdout  # v0.2.0 after the earlier test's v0.1.0
    version = re.search(rf"{ARTIFACT}@(v\d+\.\d+\.\d+)", registered).group(1)
    assert "gate FAILED" in registered
    refused = ijepa(project, "registry", "promote", "--stage", "prod", "--version", version, check=False)
    assert refused.exit_code == 1 and "refusing to promote" in refused.stderr
    assert "linear.test_top1" in refused.stderr
    ijepa(project, "registry", "promote", "--stage", "staging", "--version", version)
    tags = run(["git", "tag", "-l"], project).stdout.split()
    assert f"{ARTIFACT}@{version}" in tags and any(t.startswith(f"{ARTIFACT}#staging#") for t in tags)
    assert not [t for t in tags if t.startswith(f"{ARTIFACT}#prod#") and t != f"{ARTIFACT}#prod#1"]
    assert not [v for v in json.loads(ijepa(project, "registry", "list", "--json").stdout)
                if v["version"] == version and "prod" in v["stages"]]  # fmt: skip
