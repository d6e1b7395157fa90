#!/usr/bin/env bash
# GPU check, ready to run as is on a machine with NVIDIA GPUs (about 5 minutes in all):
#   1. ViT-B/16 224 I-JEPA training step, bf16: images/s and MFU, eager and with torch.compile
#   2. nccl DDP over every GPU present (torchrun --standalone)
#   3. the training loader's images/s with all of this machine's cores (JPEG 256 px -> crop 224)
#   4. the default pipeline end to end (`dvc repro` in a throw-away copy; Debian's Fashion-MNIST if
#      installed, else a generated look-alike of the same sizes)
# Writes the figures as a BENCHMARKS.md section (--out, default bench/gpu_check.md) and prints it.
# Without CUDA it measures nothing: it says so and exits 0 (--dry-run shows the plan anywhere).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'EOF'
usage: bench/gpu_check.sh [--dry-run] [--budget SECONDS] [--out FILE] [--batch N] [--peak-tflops X]
                          [--skip-compile] [--skip-e2e]
  --dry-run        print the plan (devices, time budget, commands) and exit; runs on any machine
  --budget S       wall-clock budget for everything (default 300; at least 120)
  --out FILE       markdown section to write (default bench/gpu_check.md)
  --batch N        images per GPU for the training steps (default 128)
  --peak-tflops X  dense bf16 peak of one GPU for MFU (default: from the device name)
  --skip-compile   no torch.compile run      --skip-e2e   no end-to-end `dvc repro`
EOF
}

DRY=0 BUDGET=300 OUT=bench/gpu_check.md BATCH=128 PEAK="" COMPILE=1 E2E=1
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --budget) BUDGET="${2:?--budget needs a value}"; shift ;;
    --out) OUT="${2:?--out needs a value}"; shift ;;
    --batch) BATCH="${2:?--batch needs a value}"; shift ;;
    --peak-tflops) PEAK="${2:?--peak-tflops needs a value}"; shift ;;
    --skip-compile) COMPILE=0 ;;
    --skip-e2e) E2E=0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
for pair in "budget:$BUDGET" "batch:$BATCH"; do
  case "${pair#*:}" in ''|*[!0-9]*) echo "gpu_check: --${pair%%:*} must be a whole number, got '${pair#*:}'" >&2; exit 2 ;; esac
done
[ "$BUDGET" -ge 120 ] || { echo "gpu_check: --budget must be at least 120 s, got $BUDGET" >&2; exit 2; }

PY="${PYTHON:-}"
[ -n "$PY" ] || { [ -x .venv/bin/python ] && PY=.venv/bin/python || PY=python3; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 DO_NOT_TRACK=1
export GX_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1
read -r NGPU TORCH <<<"$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0, torch.__version__)' 2>/dev/null || echo "0 none")"
CORES=$(nproc)
T_TRAIN=$((BUDGET / 8)) T_COMPILE=$((BUDGET / 4)) T_DDP=$((BUDGET / 6)) T_LOADER=$((BUDGET / 8))

if [ "$DRY" = 1 ]; then
  echo "gpu_check plan: python $PY (torch $TORCH), $NGPU CUDA device(s), $CORES cores, budget ${BUDGET}s, out $OUT"
  echo "  1. $PY bench/gpu_bench.py train --batch $BATCH            (<= ${T_TRAIN}s)"
  [ "$COMPILE" = 1 ] && echo "     $PY bench/gpu_bench.py train --batch $BATCH --compile  (<= ${T_COMPILE}s)"
  echo "  2. torchrun --standalone --nproc_per_node=$NGPU bench/gpu_bench.py ddp --batch $BATCH  (<= ${T_DDP}s)"
  echo "  3. $PY bench/gpu_bench.py loader --workers $CORES   (<= ${T_LOADER}s)"
  [ "$E2E" = 1 ] && echo "  4. dvc repro of the default pipeline in a temporary copy (the time left)"
  [ "$NGPU" -gt 0 ] || echo "  (no CUDA device here: a real run would skip everything)"
  exit 0
fi
if [ "$NGPU" -eq 0 ]; then
  echo "gpu_check: SKIPPED: no CUDA device visible to $PY (torch $TORCH): no GPU figure was measured."
  echo "gpu_check: run it on a machine with NVIDIA GPUs (bench/gpu_check.sh --dry-run shows the plan)."
  exit 0
fi

START=$SECONDS
WORK=$(mktemp -d /tmp/ijepa-gpu-check-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
PEAKARG=() ; [ -n "$PEAK" ] && PEAKARG=(--peak-tflops "$PEAK")
step() {  # step NAME TIMEOUT CMD...: one JSON line into $WORK/NAME.json, or a note why not
  local name=$1 limit=$2; shift 2
  echo "gpu_check: $name (<= ${limit}s): $*" >&2
  if ! timeout --signal=INT --kill-after=15 "$limit" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"; then
    echo "gpu_check: $name failed or ran past ${limit}s; last lines:" >&2; tail -n 5 "$WORK/$name.err" >&2 || true
  fi
  grep '^{' "$WORK/$name.out" | tail -n 1 >"$WORK/$name.json" || rm -f "$WORK/$name.json"
}
step 1-train "$T_TRAIN" "$PY" bench/gpu_bench.py train --batch "$BATCH" "${PEAKARG[@]}"
[ "$COMPILE" = 1 ] && step 2-compile "$T_COMPILE" "$PY" bench/gpu_bench.py train --batch "$BATCH" --compile "${PEAKARG[@]}"
step 3-ddp "$T_DDP" "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NGPU" bench/gpu_bench.py ddp --batch "$BATCH"
step 4-loader "$T_LOADER" "$PY" bench/gpu_bench.py loader --workers "$CORES"
if [ "$E2E" = 1 ]; then
  LEFT=$((BUDGET - (SECONDS - START) - 10))
  if [ "$LEFT" -lt 60 ]; then
    echo '{"kind": "e2e", "note": "not run: the budget was spent"}' >"$WORK/5-e2e.json"
  elif "$PY" bench/gpu_bench.py project "$WORK/project" >"$WORK/project.json" 2>"$WORK/project.err"; then
    T0=$SECONDS
    if (cd "$WORK/project" && timeout --signal=INT "$LEFT" "$PY" -m dvc repro >"$WORK/e2e.log" 2>&1); then RC=0; else RC=$?; fi
    "$PY" - "$WORK" $((SECONDS - T0)) "$RC" "$LEFT" >"$WORK/5-e2e.json" <<'EOF'
import json, sys
from pathlib import Path
work, wall, rc, left = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
proj, info = work / "project", json.loads((work / "project.json").read_text())
def read(name):
    try:
        return json.loads((proj / "reports" / name).read_text())
    except (OSError, ValueError):
        return {}
pre, lin = read("pretrain.json"), read("eval_linear.json")
note = "generated Fashion-MNIST look-alike (60k + 10k)" if info["fake_data"] else "Fashion-MNIST 70k"
if pre:
    note += f"; pretrain {pre.get('images_per_s', 0):,.0f} images/s on {pre.get('device')} ({pre.get('precision')})"
if lin.get("linear.test_top1") is not None:
    note += f"; linear test top-1 {100 * lin['linear.test_top1']:.2f} %"
if rc:
    note += f"; dvc repro exit {rc}" + (f" (killed at the {left} s left)" if rc in (124, 130) else "")
print(json.dumps({"kind": "e2e", "wall_s": wall, "rc": rc, "note": note}))
EOF
    tail -n 3 "$WORK/e2e.log" >&2
  else
    echo '{"kind": "e2e", "note": "not run: the project copy failed"}' >"$WORK/5-e2e.json"; cat "$WORK/project.err" >&2
  fi
fi
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || true)
MACHINE="$NGPU x ${GPU:-GPU}, $CORES cores, torch $TORCH, $(date -u +%Y-%m-%d), total $((SECONDS - START)) s"
mkdir -p "$(dirname "$OUT")"
"$PY" bench/gpu_bench.py render "$WORK" --machine "$MACHINE" >"$OUT"
cat "$OUT"
