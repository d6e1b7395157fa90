"""Markdown for BENCHMARKS.md from bench/train_step.py's raw results: step times per variant with the
ratio to the original, FLOPs against the measured GEMM peak, torch.compile's cost and pay-off, and the
per-op profiles. Medians over the measured steps (warm-up excluded) throughout.
"""

from __future__ import annotations

import statistics
from typing import Any

from train_step_runners import FORWARD, PARTS, Variant

COLUMNS = (*PARTS[:4], "forward", *PARTS[4:])
FLOP_PARTS = ("target_fwd", "context_fwd", "predictor_loss", "backward")
STALL = 3.0  # a compiled step this many times its median is a (re)compile


def median_parts(steps: list[dict[str, float]]) -> dict[str, float]:
    out = {k: statistics.median(s[k] for s in steps) for k in steps[0]}
    if "forward" not in out:
        out["forward"] = statistics.median(sum(s[p] for p in FORWARD) for s in steps)
    return out


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "—" if x is None else format(x, spec)


class Rows:
    """The variants of one configuration with their medians, looked up by attributes."""

    def __init__(self, cfg: dict[str, Any], warmup: int) -> None:
        self.items = [(Variant(**r["variant"]), r) for r in cfg["rows"]]
        self.med = {v.key: median_parts(r["times"][warmup:]) for v, r in self.items}

    def find(self, **attrs: Any) -> Variant | None:
        return next((v for v, _ in self.items if all(getattr(v, k) == x for k, x in attrs.items())), None)

    def total(self, v: Variant | None) -> float | None:
        return None if v is None else self.med[v.key]["total"]


def _ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None else f"{a / b:.2f}x"


def _gflops(x: float | None) -> str:
    """A GFLOP/s figure: whole numbers, two decimals below 10 (an emulated bf16 GEMM runs at ~0.5)."""
    return "—" if x is None else f"{x:.0f}" if x >= 10 else f"{x:.2f}"


def timing_section(cfg: dict[str, Any], rows: Rows, base: tuple[str, str]) -> list[str]:
    def original_for(v: Variant) -> Variant | None:  # the original on the same masks, same allocator if there
        return rows.find(impl="original", fill=v.fill, malloc=v.malloc) or rows.find(impl="original", fill=v.fill)

    out = [f"### {cfg['name']} (batch {cfg['batch']}; {cfg['model']})", ""]
    out += ["| variant | ms/step | images/s | vs original | " + " | ".join(COLUMNS) + " |",
            "|---|---:|---:|---:|" + "---:|" * len(COLUMNS)]  # fmt: skip
    for v, _ in rows.items:
        m = rows.med[v.key]
        cells = " | ".join(_fmt(m.get(p)) for p in COLUMNS)
        out.append(f"| {v.label} | {m['total']:.1f} | {cfg['batch'] / m['total'] * 1e3:.0f} | "
                   f"{_ratio(rows.total(original_for(v)), m['total'])} | {cells} |")  # fmt: skip
    out += ["", "`vs original` = the original's ms/step on the same masks (fill), same allocator where measured, "
            "over the row's.", ""]  # fmt: skip
    for fill in dict.fromkeys(v.fill for v, _ in rows.items):
        m = rows.med[rows.find(fill=fill).key]
        out.append(f"- Masks, {fill} fill (medians): {m['ctx_len']:.0f} context tokens per image through the "
                   f"encoder ({m['ctx_real']:.1f} real), {m['tgt_len']:.0f} per target block.")  # fmt: skip
    ref = rows.find(impl="original", fill=base[1], malloc="default") or rows.find(impl="original", fill=base[1])
    if ref is None:
        out.append("- original: not measured (see the note above).")
        return out + [""]
    out.append(
        f"- Same math: |loss ours - loss original| = {cfg['loss_diff']:.1e} on the same weights and "
        "trimmed masks (per_target predictor; padding cannot be masked in the original)."
    )
    for prec in dict.fromkeys(v.precision for v, _ in rows.items if v.impl == "ours"):
        for fill in dict.fromkeys(v.fill for v, _ in rows.items):
            ours = rows.find(impl="ours", precision=prec, mode=base[0], fill=fill, compiled=False)
            orig = ref if fill == base[1] else rows.find(impl="original", fill=fill)
            if ours is None or orig is None:
                continue
            same = original_for(ours)
            out.append(
                f"- original {fill} ({orig.malloc} malloc) / ours {prec} {base[0]}/{fill} ({ours.malloc} "
                f"malloc) = **{_ratio(rows.total(orig), rows.total(ours))}**; same allocator: "
                f"{_ratio(rows.total(same), rows.total(ours))}."
            )
    return out + [""]


def flops_section(configs: list[dict[str, Any]], gemm: dict[str, float], warmup: int) -> list[str]:
    out = ["### FLOPs and the GEMM peak", "",
           f"Peak = best {gemm['n']}² matmul of this run: fp32 {_gflops(gemm.get('fp32'))} GFLOP/s, bf16 "
           f"{_gflops(gemm.get('bf16'))} GFLOP/s (—: not measured, no row in that precision). FLOPs from "
           "torch.utils.flop_counter (matmuls, convolutions, attention; forward and backward) on every measured "
           "step's masks; GFLOP/s = median over steps of FLOPs / time. Part cells: GFLOP @ % of the peak of the "
           "row's precision.", "",
           "| config | variant | GFLOP/step | GFLOP/s | % of peak | " + " | ".join(FLOP_PARTS) + " |",
           "|---|---|---:|---:|---:|" + "---:|" * len(FLOP_PARTS)]  # fmt: skip
    above = set()  # precisions whose step beats the "peak": the GEMM is not that precision's peak here
    for cfg in configs:
        for r in cfg["rows"]:
            if not r.get("flops"):
                continue
            v, times, peak = Variant(**r["variant"]), r["times"][warmup:], gemm.get(r["variant"]["precision"])
            flops = r["flops"]

            def rate(part: str, t: list = times, f: list = flops) -> float:
                return statistics.median(fl[part] / tm[part] / 1e6 for fl, tm in zip(f, t, strict=True))

            def pct(part: str, peak: float | None = peak) -> str:
                return "—" if not peak else f"{100 * rate(part) / peak:.0f} %"

            if peak and rate("total") > peak:
                above.add(v.precision)
            gf = statistics.median(f["total"] for f in flops) / 1e9
            cells = " | ".join(f"{statistics.median(f[p] for f in flops) / 1e9:.2f} @ {pct(p)}" for p in FLOP_PARTS)
            out.append(f"| {cfg['name']} | {v.label} | {gf:.2f} | {_gflops(rate('total'))} | {pct('total')} | "
                       f"{cells} |")  # fmt: skip
    for prec in sorted(above):
        out += ["", f"- {prec} above 100 %: the {gemm['n']}² {prec} product runs slower than the step's own smaller "
                "ones, so it is no peak and these percentages are no MFU (a dtype without a native kernel on this "
                "CPU, e.g. bf16 without AVX512-BF16 / AMX)."]  # fmt: skip
    return out + [""]


def compile_section(configs: list[dict[str, Any]], warmup: int, run_steps: int) -> list[str]:
    out = ["### torch.compile (inductor) vs eager", "",
           f"Compile cost = first compiled step minus the compiled median, plus every later step over {STALL:.0f}x "
           f"the median (recompiles for new mask shapes). Saved = eager median - compiled median. Pays over N "
           f"steps when N x saved > cost; the default pretrain run is N = {run_steps}.", "",
           "| config | variant | first step s | recompile stalls (s) | compiled ms | eager ms | saved ms/step | "
           f"break-even steps | net over {run_steps} steps |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for cfg in configs:
        rows = Rows(cfg, warmup)
        for v, r in rows.items:
            if not v.compiled:
                continue
            steps = [s["total"] for s in r["times"]]
            med = rows.med[v.key]["total"]
            stalls = [t - med for t in steps[1:] if t > STALL * med]
            cost = (steps[0] - med + sum(stalls)) / 1e3
            eager = rows.total(rows.find(impl="ours", precision=v.precision, mode=v.mode, fill=v.fill,
                                         compiled=False, malloc=v.malloc))  # fmt: skip
            saved = None if eager is None else eager - med
            even = "never" if not saved or saved <= 0 else f"{cost * 1e3 / saved:.0f}"
            net = "—" if saved is None else f"{(run_steps * saved / 1e3 - cost):+.0f} s"
            cells = [f"{steps[0] / 1e3:.1f}", f"{len(stalls)} ({sum(stalls) / 1e3:.1f})", f"{med:.1f}", _fmt(eager),
                     _fmt(saved), even, net]  # fmt: skip
            out.append(f"| {cfg['name']} | {v.label} | " + " | ".join(cells) + " |")
    return out + [""]


def profile_section(configs: list[dict[str, Any]]) -> list[str]:
    out = []
    for cfg in configs:
        for r in cfg["rows"]:
            prof = r.get("profile")
            if not prof:
                continue
            label = Variant(**r["variant"]).label
            out += [f"### Profile: {cfg['name']}, {label}", "",
                    f"torch.profiler (CPU), {prof['steps']} steps; self CPU time per step, all ops "
                    f"{prof['self_ms_total']:.1f} ms (the profiler's own overhead included; rows are profiled one "
                    "after the other, not interleaved: compare shares, not totals, across tables).", "",
                    "| op | self ms/step | % | calls/step |", "|---|---:|---:|---:|"]  # fmt: skip
            for row in prof["rows"]:
                pct = 100 * row["self_ms"] / prof["self_ms_total"]
                out.append(f"| `{row['op']}` | {row['self_ms']:.2f} | {pct:.1f} | {row['calls']:.0f} |")
            out.append("")
    return out


def render(res: dict[str, Any]) -> str:
    a, m = res["args"], res["machine"]
    base = (a["predictor_mode"][0], a["context_fill"][0])
    gemm = {"n": a["gemm_size"], **{k: max(v) for k, v in res["gemm"].items()}}
    before_after = {d: " / ".join(_gflops(x) for x in res["gemm"].get(d, [None])) for d in ("fp32", "bf16")}
    if res["original"] is None:
        original = "`original`: not measured (no checkout of facebookresearch/ijepa was given: `--original-src`)."
    else:
        original = (f"`original` = facebookresearch/ijepa's modules imported unmodified from {res['original']}, "
                    "fed our masks (the same token counts; with the pad fill it attends to the padding, which it "
                    "cannot mask).")  # fmt: skip
    lines = [
        "## Training step (bench/train_step.py)", "",
        f"Machine: {m['cpu']}, {m['cores']} cores (native bf16: {m['native_bf16']}), torch.set_num_threads"
        f"({a['threads']}), torch {m['torch']}. Median of {a['reps']} steps after {a['warmup']} warm-up, every "
        "variant interleaved step by step in one run (one process per allocator setting; `tuned malloc` = after "
        "`tune_cpu_allocator()`, as the pretrain stage runs). Same seed-0 weights, images and mask indices for "
        f"every row. GEMM {a['gemm_size']}² before / after: fp32 {before_after['fp32']}, bf16 "
        f"{before_after['bf16']} GFLOP/s. Load average (1/5/15 min) at start {res['load'][0]}, at end "
        f"{res['load'][1]}. Params: {a['params']}.", "",
        f"{original} `ours` = pipeline.ijepa (explicit attention on CPU, fused AdamW, foreach EMA, autocast on "
        "the forward only).", "",
    ]  # fmt: skip
    for cfg in res["configs"]:
        lines += timing_section(cfg, Rows(cfg, a["warmup"]), base)
    lines += flops_section(res["configs"], gemm, a["warmup"])
    if any(r["variant"]["compiled"] for c in res["configs"] for r in c["rows"]):
        lines += compile_section(res["configs"], a["warmup"], a["run_steps"])
    lines += profile_section(res["configs"])
    return "\n".join(lines).rstrip() + "\n"
