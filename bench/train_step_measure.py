"""What bench/train_step.py measures on a runner (bench/train_step_runners.py): part timings of one
step, its FLOPs per part (torch.utils.flop_counter: matmuls, convolutions and attention, forward and
backward), a per-op CPU profile, and the machine's 2048² GEMM rate as the peak to compare with.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode


class Runner(Protocol):
    masks: Any

    def parts(self, step: int) -> Any: ...


def time_step(runner: Runner, step: int) -> dict[str, float]:
    """ms per part of training step `step`, their total, and the step's mask lengths."""
    out, clock = {}, time.perf_counter
    start = last = clock()
    for part in runner.parts(step):
        now = clock()
        out[part] = (now - last) * 1e3
        last = now
    out["total"] = (last - start) * 1e3
    m = runner.masks
    out["ctx_len"] = float(m.context.shape[1])  # tokens per image the context encoder runs (padding included)
    out["ctx_real"] = float(m.context_lengths.float().mean())
    out["tgt_len"] = float(m.targets.shape[2])
    return out


def count_flops(runner: Runner, steps: list[int]) -> list[dict[str, float]]:
    """FLOPs per part of each step in `steps` (these steps are run again, updating the runner's model;
    steps whose mask shapes were already counted are not re-run: FLOPs depend on shapes only)."""
    cache: dict[tuple, dict[str, float]] = {}
    out = []
    for step in steps:
        gen, flops = runner.parts(step), {}
        next(gen)  # the masks
        shape = (tuple(runner.masks.context.shape), tuple(runner.masks.targets.shape))
        if shape in cache:
            gen.close()
            out.append(cache[shape])
            continue
        while True:
            with FlopCounterMode(display=False) as counter:
                part = next(gen, None)
            if part is None:
                break
            flops[part] = float(counter.get_total_flops())
        flops["total"] = sum(flops.values())
        cache[shape] = flops
        out.append(flops)
    return out


def profile_ops(runner: Runner, steps: list[int], top: int) -> dict[str, Any]:
    """torch.profiler (CPU) over `steps`: the `top` ops by self CPU time, per step."""
    for _ in runner.parts(steps[0]):  # one unprofiled step first (allocator, autocast caches)
        pass
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for step in steps:
            for _ in runner.parts(step):
                pass
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    n = len(steps)
    total = sum(e.self_cpu_time_total for e in events) / 1e3 / n
    rows = [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3 / n, "calls": e.count / n} for e in events[:top]]
    return {"steps": n, "self_ms_total": total, "rows": rows}


def gemm_gflops(n: int, dtype: torch.dtype, reps: int = 5, budget_s: float = 2.0) -> float:
    """Best GFLOP/s of an n x n @ n x n matmul in `dtype` (2n³ FLOPs) after one warm-up product: `reps`
    products, fewer once they have taken `budget_s` (an emulated bf16 product can take a minute)."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
    c = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=c)
    best, spent = float("inf"), 0.0
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        took = time.perf_counter() - t
        best, spent = min(best, took), spent + took
        if spent > budget_s:
            break
    return 2 * n**3 / best / 1e9
