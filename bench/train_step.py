"""Benchmark of one full I-JEPA training step on CPU (masks, target forward, context forward, predictor +
loss, backward, optimiser, EMA): ours vs the original facebookresearch/ijepa modules, interleaved step
by step in one run; medians, ratios, FLOPs vs the measured GEMM peak, per-op profiles, torch.compile.

Configurations: `default` (params.yaml: ViT 128x4 patch 4 on 28x28 grey, predictor 64x3, batch 128) and
`vit-tiny` (64x64 RGB, patch 8, ViT 192x12, predictor 96x6, batch 32), both with params.yaml's masks.
Rows of `ours`: every precision x model.predictor_mode x mask.context_fill; `original` (fp32) gets the
same masks, for every fill. The original is never part of this project: pass a checkout of it
(`--original-src`), imported unmodified at run time; without one its rows are skipped.

    python bench/train_step.py --original-src /tmp/ijepa-original [--compile] [--out bench/train_step.md]
    python bench/train_step.py --reps 2 --warmup 1 --batch 4 --gemm-size 256   # a quick check that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from train_step_measure import count_flops, gemm_gflops, profile_ops, time_step  # noqa: E402
from train_step_report import render  # noqa: E402
from train_step_runners import (  # noqa: E402
    ORIGINAL_HOWTO,
    OriginalRunner,
    OursRunner,
    Variant,
    import_original,
    load_setup,
    max_loss_difference,
)

from pipeline.config import load_section  # noqa: E402
from pipeline.ijepa.layers import tune_cpu_allocator  # noqa: E402
from pipeline.ijepa.precision import cpu_has_native_bf16  # noqa: E402

CONFIGS = ("default", "vit-tiny")
MODES, FILLS = ("per_target", "shared"), ("pad", "trim")
ORIGINAL_ENV = "IJEPA_ORIGINAL_SRC"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, epilog=ORIGINAL_HOWTO, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", nargs="+", default=list(CONFIGS), choices=CONFIGS, help="configurations to run")
    ap.add_argument("--reps", "--steps", type=int, default=20, help="measured steps per variant (default 20)")
    ap.add_argument("--warmup", type=int, default=3, help="unmeasured steps per variant first (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each worker (default 2)")
    ap.add_argument("--batch", type=int, default=None, help="batch size for every config (default: 128 / 32)")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="params file (model/mask/train)")
    ap.add_argument("--original-src", type=Path, default=None,
                    help=f"checkout of facebookresearch/ijepa (the folder holding src/); default ${ORIGINAL_ENV}; "
                         "absent: the original rows are skipped")  # fmt: skip
    ap.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=None,
                    help="precisions of our rows (default: fp32, plus bf16 where the CPU has native bf16); "
                         "the bf16 GEMM peak is measured only with bf16 rows")  # fmt: skip
    ap.add_argument(
        "--predictor-mode",
        nargs="+",
        choices=MODES,
        default=None,
        help="model.predictor_mode values of our rows (default: params.yaml's first, then the other)",
    )
    ap.add_argument("--context-fill", nargs="+", choices=FILLS, default=None,
                    help="mask.context_fill values of our rows and the original's (default: params.yaml's "
                         "first, then the other)")  # fmt: skip
    ap.add_argument(
        "--malloc",
        nargs="+",
        choices=("tuned", "default"),
        default=["tuned", "default"],
        help="allocator processes (default both); all our rows run in the first, the original in each",
    )
    ap.add_argument(
        "--compile",
        action="store_true",
        help="add torch.compile'd rows of ours (first mode/fill, each precision): compile cost vs saving",
    )
    ap.add_argument(
        "--compile-cache",
        choices=("cold", "warm"),
        default="cold",
        help="cold: an empty inductor cache (a first run); warm: the user's cache (default cold)",
    )
    ap.add_argument(
        "--run-steps",
        type=int,
        default=858,
        help="steps the compile pay-off is judged over (default 858: the default 2-epoch pretrain run)",
    )
    ap.add_argument("--profile-steps", type=int, default=3, help="profiled steps per profiled row (0: no profiles)")
    ap.add_argument("--top", type=int, default=15, help="ops per profile table (default 15)")
    ap.add_argument("--gemm-size", type=int, default=2048, help="n of the n x n peak GEMM (default 2048)")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown section here")
    ap.add_argument("--json", type=Path, default=None, help="write the raw results (every step) here")
    ap.add_argument("--from-json", type=Path, default=None, help="measure nothing: render a saved --json file")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return ap


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = parser()
    args = ap.parse_args(argv)
    if args.worker:
        return args
    for name in ("reps", "threads", "top", "gemm_size", "run_steps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("warmup", "profile_steps"):
        if getattr(args, name) < 0:
            ap.error(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    if args.batch is not None and args.batch < 2:
        ap.error(f"--batch must be at least 2, got {args.batch}")
    if args.compile and args.warmup < 1:
        ap.error("--compile needs --warmup 1 or more (the first compiled step is the compilation)")
    try:
        model, mask = load_section("model", args.params), load_section("mask", args.params)
    except ValueError as exc:
        ap.error(str(exc))
    first = {"predictor_mode": (model.predictor_mode, MODES), "context_fill": (mask.context_fill, FILLS)}
    for name, (value, choices) in first.items():
        if getattr(args, name) is None:
            setattr(args, name, [value, *(c for c in choices if c != value)])
    args.precision = args.precision or ["fp32", *(["bf16"] if cpu_has_native_bf16() else [])]
    for name in ("config", "precision", "predictor_mode", "context_fill", "malloc"):
        setattr(args, name, list(dict.fromkeys(getattr(args, name))))  # repeated values: once
    src = args.original_src or os.environ.get(ORIGINAL_ENV)
    args.original_src = Path(src).expanduser().resolve() if src else None
    if args.original_src is not None:
        try:
            import_original(args.original_src)  # a clear error here rather than inside a worker
        except (OSError, ImportError) as exc:
            ap.error(f"--original-src / ${ORIGINAL_ENV}: {exc}")
    return args


def plan(args: argparse.Namespace) -> list[Variant]:
    """The rows, in table order: original (first fill in each allocator, the other fills in the first),
    ours (every precision x mode x fill, in the first allocator process), ours first mode/fill in the
    other allocators, compiled rows."""
    out, first, mode, fill = [], args.malloc[0], args.predictor_mode[0], args.context_fill[0]
    for cfg in args.config:
        if args.original_src is not None:
            out += [Variant(cfg, "original", fill=fill, malloc=m) for m in args.malloc]
            out += [Variant(cfg, "original", fill=f, malloc=first) for f in args.context_fill[1:]]
        out += [Variant(cfg, "ours", p, md, f, malloc=first) for p in args.precision
                for md in args.predictor_mode for f in args.context_fill]  # fmt: skip
        out += [Variant(cfg, "ours", args.precision[0], mode, fill, malloc=m) for m in args.malloc[1:]]
        if args.compile:
            out += [Variant(cfg, "ours", p, mode, fill, compiled=True, malloc=first) for p in args.precision]
    return out


def _worker() -> None:
    """One process per allocator setting (glibc's mallopt is process-wide). First stdin line: the spec;
    then one JSON command per line, one JSON answer each, on a private copy of stdout (fd 1 itself is
    pointed at stderr: libraries that print, e.g. the original's logging, cannot break the protocol)."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    spec = json.loads(sys.stdin.readline())
    torch.set_num_threads(spec["threads"])
    ok = tune_cpu_allocator() if spec["malloc"] == "tuned" else True
    setups = {c: load_setup(c, Path(spec["params"]), spec["batch"]) for c in spec["configs"]}
    runners, info = {}, {}
    for d in spec["variants"]:
        v = Variant(**d)
        if v.impl == "original":
            runners[v.key] = OriginalRunner(setups[v.config], v, Path(spec["original_src"]))
            info.setdefault(v.config, {})["loss_diff"] = max_loss_difference(setups[v.config], runners[v.key])
        else:
            runners[v.key] = OursRunner(setups[v.config], v)
    proto.write(json.dumps({"ok": ok, "info": info}) + "\n")
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "step":
            answer: Any = time_step(runners[cmd["key"]], cmd["step"])
        elif cmd["cmd"] == "flops":
            answer = count_flops(runners[cmd["key"]], cmd["steps"])
        elif cmd["cmd"] == "profile":
            answer = profile_ops(runners[cmd["key"]], cmd["steps"], cmd["top"])
        else:
            answer = {d: gemm_gflops(cmd["n"], DTYPES[d]) for d in cmd["dtypes"]}
        proto.write(json.dumps(answer) + "\n")


class Worker:
    """A `--worker` subprocess of this script (plain subprocess: no multiprocessing machinery)."""

    def __init__(self, spec: dict[str, Any], env: dict[str, str]) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     bufsize=1, env=env)  # fmt: skip
        self.proc.stdin.write(json.dumps(spec) + "\n")

    def recv(self) -> Any:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker exited (code {self.proc.wait()}); its error is above")
        return json.loads(line)

    def ask(self, **cmd: Any) -> Any:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        return self.recv()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=120)


def run(args: argparse.Namespace, variants: list[Variant], cache_dir: str | None) -> dict[str, Any]:
    """Workers up, then for each config one step at a time round-robin over its variants (load changes on
    shared cores hit all alike); GEMM peak before and after; FLOPs and profiles after the timing."""
    env = {**os.environ, **({"TORCHINDUCTOR_CACHE_DIR": cache_dir} if cache_dir else {})}
    spec = {"threads": args.threads, "params": str(args.params), "batch": args.batch, "configs": args.config,
            "original_src": str(args.original_src)}  # fmt: skip
    workers = {m: Worker({**spec, "malloc": m, "variants": [asdict(v) for v in variants if v.malloc == m]}, env)
               for m in args.malloc}  # fmt: skip
    ready = {m: w.recv() for m, w in workers.items()}
    for m, r in ready.items():
        if not r["ok"]:
            print(f"tune_cpu_allocator() is not available here (no glibc): the {m!r} rows are dropped", file=sys.stderr)
    variants = [v for v in variants if ready[v.malloc]["ok"]]
    first = workers[args.malloc[0]]
    dtypes = ["fp32", *(["bf16"] if "bf16" in args.precision else [])]  # emulated bf16: minutes, only if used
    gemm = [first.ask(cmd="gemm", n=args.gemm_size, dtypes=dtypes)]
    times: dict[str, list] = {v.key: [] for v in variants}
    for cfg in args.config:
        for i in range(args.warmup + args.reps):
            for v in (v for v in variants if v.config == cfg):
                times[v.key].append(workers[v.malloc].ask(cmd="step", key=v.key, step=i))
    gemm.append(first.ask(cmd="gemm", n=args.gemm_size, dtypes=dtypes))
    measured = list(range(args.warmup, args.warmup + args.reps))
    mode, fill = args.predictor_mode[0], args.context_fill[0]
    rows: dict[str, list] = {c: [] for c in args.config}
    for v in variants:
        row: dict[str, Any] = {"variant": asdict(v), "times": times[v.key]}
        if v.malloc == args.malloc[0] and not v.compiled:
            row["flops"] = first.ask(cmd="flops", key=v.key, steps=measured)
            profiled = v.fill == fill and (v.impl == "original" or v.mode == mode)
            if args.profile_steps and profiled:
                row["profile"] = first.ask(cmd="profile", key=v.key, steps=measured[: args.profile_steps],
                                           top=args.top)  # fmt: skip
        rows[v.config].append(row)
    for w in workers.values():
        w.close()
    configs = []
    for c in args.config:
        s = load_setup(c, args.params, args.batch)
        p = s.model
        model = (f"ViT {p.embed_dim}x{p.depth} heads {p.num_heads}, patch {p.patch_size} on {p.img_size}², "
                 f"{p.in_chans} channel(s), predictor {p.pred_embed_dim}x{p.pred_depth}")  # fmt: skip
        info = ready[args.malloc[0]]["info"].get(c, {})
        configs.append({"name": c, "batch": s.batch, "model": model, "rows": rows[c], **info})
    return {"configs": configs, "gemm": {d: [g[d] for g in gemm] for d in dtypes}}


def machine() -> dict[str, Any]:
    cpu = platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "native_bf16": cpu_has_native_bf16(), "torch": torch.__version__}


def load_average() -> str:
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    if args.worker:
        _worker()
        return ""
    if args.from_json:
        return write(render(json.loads(args.from_json.read_text())), args.out)
    if args.original_src is None:
        print(f"original: skipped (no --original-src / ${ORIGINAL_ENV}). To measure it: {ORIGINAL_HOWTO}",
              file=sys.stderr)  # fmt: skip
    variants = plan(args)
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="train_step-inductor-") as tmp:
        res = run(args, variants, tmp if args.compile and args.compile_cache == "cold" else None)
    res.update(
        load=(load_start, load_average()),
        machine=machine(),
        original=str(args.original_src) if args.original_src else None,
        args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    )
    if args.json:
        write(json.dumps(res, indent=1), args.json, echo=False)
    return write(render(res), args.out)


def write(text: str, path: Path | None, echo: bool = True) -> str:
    """Print `text` (echo) and write it atomically to `path` when given."""
    if echo:
        print(text)
    if path:
        tmp = Path(f"{path}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return text


if __name__ == "__main__":
    main()
