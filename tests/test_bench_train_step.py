"""bench/train_step.py: argument handling, the rows it plans, its measuring side on one real tiny step of
ours (timing, exact FLOPs, profile, GEMM peak) and the report rendered from chosen raw numbers. No worker
process and no checkout of the original are needed: the full benchmark is run by hand (BENCHMARKS.md)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def bench():  # noqa: ANN201 - the bench/train_step.py module
    spec = importlib.util.spec_from_file_location("train_step_bench", ROOT / "bench" / "train_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def params_file(tmp_path: Path, mode: str, fill: str) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"]["predictor_mode"], raw["mask"]["context_fill"] = mode, fill
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_help_explains_every_option(bench, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        bench.parse_args(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for action in bench.parser()._actions:
        if action.help == argparse.SUPPRESS:
            continue
        assert action.help, action.option_strings
        assert all(opt in text for opt in action.option_strings), action.option_strings
    assert "git clone https://github.com/facebookresearch/ijepa" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--reps", "0"], "--reps must be at least 1"),
        (["--warmup", "-1"], "--warmup must be 0 or more"),
        (["--batch", "1"], "--batch must be at least 2"),
        (["--compile", "--warmup", "0"], "--compile needs --warmup 1"),
        (["--config", "vit-huge"], "invalid choice: 'vit-huge'"),
        (["--params", "/nonexistent/params.yaml"], "/nonexistent/params.yaml: params file not found"),
        (["--original-src", "/nonexistent/ijepa"], "no src/models/vision_transformer.py there"),
    ],
)
def test_bad_arguments_fail_clearly(bench, capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        bench.parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_an_original_checkout_without_its_model_file_is_refused(bench, tmp_path, capsys) -> None:
    (tmp_path / "src" / "models").mkdir(parents=True)  # the folder, but not the original's code
    with pytest.raises(SystemExit):
        bench.parse_args(["--original-src", str(tmp_path)])
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "git clone" in err


def test_defaults_follow_params_yaml_and_the_environment(bench, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(bench.ORIGINAL_ENV, raising=False)
    args = bench.parse_args(["--params", str(params_file(tmp_path, "shared", "trim"))])
    assert args.predictor_mode == ["shared", "per_target"] and args.context_fill == ["trim", "pad"]
    assert args.original_src is None and args.precision[0] == "fp32"
    assert args.reps == 20 and bench.parse_args(["--steps", "5"]).reps == 5  # the old spelling still works
    monkeypatch.setenv(bench.ORIGINAL_ENV, str(tmp_path / "missing"))
    with pytest.raises(SystemExit):  # the variable is checked like the option
        bench.parse_args([])


def test_plan_lists_the_rows_in_table_order(bench, tmp_path) -> None:
    args = bench.parse_args(["--params", str(params_file(tmp_path, "per_target", "pad")), "--precision", "fp32",
                             "bf16", "--compile", "--config", "default", "vit-tiny"])  # fmt: skip
    assert [v.impl for v in bench.plan(args)].count("original") == 0  # no checkout: no original rows
    args.original_src = tmp_path  # plan() only lists rows; the checkout is checked by parse_args
    rows = bench.plan(args)
    default = [v for v in rows if v.config == "default"]
    assert len(rows) == 2 * len(default)
    labels = [v.label for v in default]
    assert labels[:3] == [
        "original fp32 (our pad masks), tuned malloc",
        "original fp32 (our pad masks), default malloc",
        "original fp32 (our trim masks), tuned malloc",
    ]
    ours = [v for v in default if v.impl == "ours" and not v.compiled and v.malloc == "tuned"]
    assert {(v.precision, v.mode, v.fill) for v in ours} == {
        (p, m, f) for p in ("fp32", "bf16") for m in ("per_target", "shared") for f in ("pad", "trim")
    }
    assert [v.label for v in default if v.malloc == "default" and v.impl == "ours"] == [
        "ours fp32 per_target/pad, default malloc"
    ]
    assert [v.label for v in default if v.compiled] == [
        "ours fp32 per_target/pad compiled, tuned malloc",
        "ours bf16 per_target/pad compiled, tuned malloc",
    ]
    assert len({v.key for v in rows}) == len(rows)


def test_a_step_of_ours_is_timed_flop_counted_and_profiled(bench, tmp_path) -> None:
    """The measuring side on a real (tiny) step of ours: every part timed, FLOPs that match the
    encoder's arithmetic, a profile table."""
    from train_step_measure import count_flops, profile_ops, time_step
    from train_step_runners import PARTS, OursRunner, Variant, load_setup

    setup = load_setup("default", params_file(tmp_path, "per_target", "trim"), batch=2)
    runner = OursRunner(setup, Variant("default", "ours", fill="trim"))
    t = time_step(runner, step=0)
    assert set(PARTS) <= set(t) and abs(t["total"] - sum(t[p] for p in PARTS)) < 1e-6
    assert t["ctx_len"] == t["ctx_real"] >= setup.mask.min_context  # trimmed: no padding
    flops = count_flops(runner, [1, 1])
    assert flops[0] == flops[1] and flops[0]["total"] == sum(flops[0][p] for p in PARTS[1:])
    p, b = setup.model, setup.batch
    n, d = p.grid[0] * p.grid[1], p.embed_dim
    block = 2 * n * d * (3 * d + d + 2 * int(p.mlp_ratio * d)) + 2 * 2 * n * n * d  # linears + q k^T, a v
    patch = 2 * n * d * p.in_chans * p.patch_size**2
    assert flops[0]["target_fwd"] == b * (p.depth * block + patch)  # the whole image through the target encoder
    assert flops[0]["backward"] > flops[0]["context_fwd"] + flops[0]["predictor_loss"]
    assert flops[0]["optimizer"] == flops[0]["ema"] == 0  # elementwise: not counted
    prof = profile_ops(runner, [2], top=5)
    assert prof["steps"] == 1 and len(prof["rows"]) == 5
    assert any(r["op"] in ("aten::mm", "aten::addmm") for r in prof["rows"])


def test_the_gemm_peak_is_measured_within_its_budget() -> None:
    import time

    import torch
    from train_step_measure import gemm_gflops

    start = time.perf_counter()
    assert gemm_gflops(64, torch.float32) > 0.1
    assert gemm_gflops(64, torch.float32, reps=1000, budget_s=0.05) > 0.1
    assert time.perf_counter() - start < 5


def _fake_results(bench, tmp_path) -> dict:
    """Raw results as bench/train_step.py's run() writes them, with chosen numbers (no worker)."""
    args = bench.parse_args(["--params", str(params_file(tmp_path, "per_target", "pad")), "--config", "vit-tiny",
                             "--precision", "fp32", "--warmup", "1", "--reps", "2", "--malloc", "tuned"])  # fmt: skip
    from train_step_runners import PARTS

    parts = dict.fromkeys(PARTS, 1.0)

    def steps(total: float, first: float | None = None) -> list[dict]:
        return [{**parts, "total": t, "ctx_len": 42.0, "ctx_real": 35.0, "tgt_len": 10.0}
                for t in (first or total, total, total)]  # fmt: skip

    flops = [dict.fromkeys(PARTS, 0.0) | {"target_fwd": 50e6, "total": 100e6}] * 2
    v = bench.Variant
    rows = [
        {"variant": vars(v("vit-tiny", "original", malloc="tuned")), "times": steps(200.0), "flops": flops},
        {"variant": vars(v("vit-tiny", "ours", malloc="tuned")), "times": steps(100.0), "flops": flops,
         "profile": {"steps": 1, "self_ms_total": 80.0, "rows": [{"op": "aten::mm", "self_ms": 40.0, "calls": 7}]}},
        {"variant": vars(v("vit-tiny", "ours", compiled=True, malloc="tuned")), "times": steps(80.0, first=30_080.0)},
        {"variant": vars(v("vit-tiny", "original", fill="trim", malloc="tuned")), "times": steps(150.0)},
        {"variant": vars(v("vit-tiny", "ours", fill="trim", malloc="tuned")), "times": steps(50.0)},
        {"variant": vars(v("vit-tiny", "ours", "bf16", malloc="tuned")), "times": steps(50.0), "flops": flops},
    ]  # fmt: skip
    return {
        "configs": [{"name": "vit-tiny", "batch": 32, "model": "ViT", "rows": rows, "loss_diff": 0.0}],
        "gemm": {"fp32": [40.0, 50.0], "bf16": [1.0, 1.0]},
        "load": ("1 / 1 / 1", "1 / 1 / 1"),
        "machine": {"cpu": "test cpu", "cores": 2, "native_bf16": False, "torch": "x"},
        "original": "/tmp/ijepa-original",
        "args": {k: str(x) if isinstance(x, Path) else x for k, x in vars(args).items()},
    }


def test_the_report_gives_ratios_peak_fractions_compile_payoff_and_profiles(bench, tmp_path) -> None:
    text = bench.render(_fake_results(bench, tmp_path))
    assert "| original fp32 (our pad masks), tuned malloc | 200.0 | 160 | 1.00x |" in text
    assert "| ours fp32 per_target/pad, tuned malloc | 100.0 | 320 | 2.00x |" in text
    assert "original pad (tuned malloc) / ours fp32 per_target/pad (tuned malloc) = **2.00x**" in text
    assert "| ours fp32 per_target/trim, tuned malloc | 50.0 | 640 | 3.00x |" in text  # vs the original on trim
    assert "original trim (tuned malloc) / ours fp32 per_target/trim (tuned malloc) = **3.00x**" in text
    # 100 MFLOP in 100 ms = 1 GFLOP/s = 2 % of the best 50 GFLOP/s; target part 50 MFLOP in 1 ms = 100 %
    assert "| vit-tiny | ours fp32 per_target/pad, tuned malloc | 0.10 | 1.00 | 2 % | 0.05 @ 100 % |" in text
    # compile: 30 s first step - 80 ms median = 30 s cost; saves 20 ms/step -> 1500 steps to break even
    assert "| 30.1 | 0 (0.0) | 80.0 | 100.0 | 20.0 | 1500 | -13 s |" in text
    assert "| `aten::mm` | 40.00 | 50.0 | 7 |" in text
    # bf16: 2 GFLOP/s against a 1 GFLOP/s "peak" (emulated bf16): flagged, not passed off as MFU
    assert "ours bf16 per_target/pad (tuned malloc) = **4.00x**" in text and "| 2.00 | 200 % |" in text
    assert "- bf16 above 100 %: the 2048² bf16 product" in text and "fp32 above" not in text


def test_a_saved_run_is_rendered_again_without_measuring(bench, tmp_path, capsys) -> None:
    import json

    saved, out = tmp_path / "run.json", tmp_path / "train_step.md"
    saved.write_text(json.dumps(_fake_results(bench, tmp_path)))
    text = bench.main(["--from-json", str(saved), "--out", str(out)])
    assert out.read_text() == text and "**2.00x**" in text
    assert not list(tmp_path.glob("*.tmp"))  # written atomically: no temporary file left
