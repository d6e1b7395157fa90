"""Training precision: `auto` follows the hardware (pipeline/ijepa/precision.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import pipeline.ijepa.precision as precision
from pipeline.ijepa.precision import autocast, cpu_has_native_bf16, resolve_precision

AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx fma avx2\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx fma avx2\n"
AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    for text, expected in ((AVX2, False), (AVX512_BF16, True), ("flags : amx_bf16 amx_tile\n", True), ("", False)):
        (tmp_path / "cpuinfo").write_text(text)
        assert cpu_has_native_bf16(tmp_path / "cpuinfo") is expected
    assert cpu_has_native_bf16(tmp_path / "missing") is False  # no /proc: assume emulated


@pytest.mark.parametrize("native", [False, True])
def test_auto_picks_bf16_only_where_it_is_native(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert resolve_precision(cpu, "auto") == ("bf16" if native else "fp32")
    assert resolve_precision(torch.device("cuda"), "auto") == "bf16"
    assert resolve_precision(cpu, "fp32") == "fp32" and resolve_precision(cpu, "bf16") == "bf16"
    with autocast(cpu, "auto"):
        y = torch.ones(4, 4) @ torch.ones(4, 4)
    assert y.dtype == (torch.bfloat16 if native else torch.float32)
