"""A three-stage git+DVC project that runs in well under a second per stage (orchestration tests).

prepare (params `prep`) -> train (params `train`; dvclive-style loss TSV, can be made to fail or to
run slowly) -> evaluate (params `evaluate`; writes reports/eval_linear.json with the keys the sweep
and the flow's artifact read). It does not depend on the real I-JEPA stages.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from tests.conftest import run

PARAMS = {
    "prep": {"n": 10},
    "train": {"lr": 0.01, "steps": 4, "sleep": 0.0, "fail": False},
    "evaluate": {"k": 3},
    "flow": {"retries": 0, "timeout_s": 120, "lock_timeout_s": 30},
    "sweep": {
        "study": "mini",
        "n_trials": 3,
        "seed": 0,
        "target": "evaluate",
        "trial_timeout_s": 120,
        "pruning": {"enabled": False, "file": "reports/live/loss.tsv", "metric": "loss", "poll_s": 0.3},
        "space": {
            "train.lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True},
            "evaluate.k": {"type": "int", "low": 1, "high": 9},
        },
    },
}

STAGES = {
    "prepare": {
        "cmd": "python src/prepare.py",
        "deps": ["src/prepare.py"],
        "params": ["prep"],
        "outs": ["data/prep.txt"],
    },
    "train": {
        "cmd": "python src/train.py",
        "deps": ["src/train.py", "data/prep.txt"],
        "params": ["train"],
        "outs": ["models/model.txt"],
        "metrics": [{"reports/train.json": {"cache": False}}],
        "plots": [{"reports/live/loss.tsv": {"cache": False, "x": "step"}}],
    },
    "evaluate": {
        "cmd": "python src/evaluate.py",
        "deps": ["src/evaluate.py", "models/model.txt"],
        "params": ["evaluate"],
        "metrics": [{"reports/eval_linear.json": {"cache": False}}],
    },
}

_PREPARE = """import os, yaml
p = yaml.safe_load(open("params.yaml"))["prep"]
os.makedirs("data", exist_ok=True)
open("data/prep.txt", "w").write(str(sum(range(p["n"]))))
print("prepare: wrote", p["n"], "rows")
"""

_TRAIN = """import json, os, sys, time, yaml
p = yaml.safe_load(open("params.yaml"))["train"]
if p["fail"]:
    print("train: error: deliberately broken (train.fail=true)", file=sys.stderr)
    sys.exit(3)
base = float(open("data/prep.txt").read())
os.makedirs("models", exist_ok=True)
os.makedirs("reports/live", exist_ok=True)
loss = 1.0 + abs(p["lr"] - 0.01) * 10
with open("reports/live/loss.tsv", "w") as fh:
    fh.write("step\\tloss\\n")
    for step in range(p["steps"]):
        fh.write(f"{step}\\t{loss / (step + 1):.6f}\\n")
        fh.flush()
        print(f"train: step {step} loss {loss / (step + 1):.4f}", flush=True)
        time.sleep(p["sleep"])
open("models/model.txt", "w").write(f"{base} {p['lr']}")
json.dump({"loss": loss / p["steps"]}, open("reports/train.json", "w"))
"""

_EVALUATE = """import json, os, yaml
k = yaml.safe_load(open("params.yaml"))["evaluate"]["k"]
base, lr = map(float, open("models/model.txt").read().split())
val = round(1.0 / (1.0 + abs(lr - 0.01) * 10) - 0.01 * abs(k - 5), 6)
report = {"linear.val_top1": val, "linear.test_top1": round(val - 0.02, 6),
          "baseline.raw.linear.test_top1": 0.5, "baseline.random.linear.test_top1": 0.3}
os.makedirs("reports", exist_ok=True)
json.dump(report, open("reports/eval_linear.json", "w"))
print("evaluate: val", val)
"""


def make_mini_project(dest: Path, params: dict | None = None, commit: bool = True) -> Path:
    """Write the mini project into `dest` (git init + dvc init + first commit)."""
    (dest / "src").mkdir(parents=True, exist_ok=True)
    for name, text in {"prepare.py": _PREPARE, "train.py": _TRAIN, "evaluate.py": _EVALUATE}.items():
        (dest / "src" / name).write_text(text)
    (dest / "params.yaml").write_text(yaml.safe_dump(params or PARAMS, sort_keys=False))
    (dest / "dvc.yaml").write_text(yaml.safe_dump({"stages": STAGES}, sort_keys=False))
    (dest / ".gitignore").write_text(".prefect/\n.optuna/\n")
    run(["git", "init", "-q", "-b", "main"], dest)
    run([sys.executable, "-m", "dvc", "init", "-q"], dest)
    run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], dest)
    if commit:
        git_commit(dest, "mini project")
    return dest


def git_commit(dest: Path, message: str) -> None:
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", message], dest)


def set_param(dest: Path, section: str, key: str, value: object) -> None:
    path = dest / "params.yaml"
    data = yaml.safe_load(path.read_text())
    data[section][key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
