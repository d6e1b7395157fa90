"""Training precision: which autocast dtype a pretraining run uses on which hardware.

`auto` picks bf16 autocast on CUDA and on CPUs that compute bf16 natively (AVX512-BF16 / AMX-BF16:
bf16 GEMMs measured ~4x faster than fp32 on such a 2-core EPYC), fp32 elsewhere (an AVX2-only CPU
emulates bf16 and is slower in it than in fp32). Evaluation features have their own rule
(`pipeline.eval.features.resolve_precision`: fp32 on CPU).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16 flags): there bf16 matmuls run
    ~4x faster than fp32; elsewhere they are emulated and slower than fp32."""
    try:
        flags = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def resolve_precision(device: torch.device, precision: str) -> str:
    """`auto` -> bf16 on CUDA and on CPUs with native bf16, else fp32; explicit values are kept."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()) else "fp32"


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """bf16 autocast when `precision` resolves to bf16, else a no-op (fp32)."""
    if resolve_precision(device, precision) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()
