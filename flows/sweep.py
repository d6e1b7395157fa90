"""Prefect flow `ijepa-sweep`: an Optuna study whose every trial is one DVC experiment.

Each trial draws values from `sweep.space` (params.yaml) and runs
`dvc exp run --temp -n trial-<study>-<n> -S key=value ... [target]` (isolated in a temp dir, so the
workspace is untouched and the result is an experiment in `dvc exp show`). The objective is the
trial's validation metric (`sweep.objective`, default `linear.val_top1` of reports/eval_linear.json),
read from the experiment's commit; test metrics are recorded as user attrs only. Trial <-> experiment:
the trial's user attr `exp_name`, and the number inside the experiment name.

Pruning (`sweep.pruning`): once the stage that writes the dvclive loss TSV has started inside DVC's
temp run dir (DVC logs `Running stage 'X':` after removing X's old outs), the file is read every
`poll_s`; each new row is reported to the trial and Optuna's MedianPruner decides. A pruned
trial's `dvc exp run` is interrupted, so it saves compute but leaves no experiment. A failing trial is
told to Optuna as FAIL (with the reason as user attr `error`) and the sweep goes on.

Parallel workers: several `ijepa sweep` processes, each in its own checkout (one DVC command at a
time per checkout), share one study through an RDB storage (PostgreSQL). Optuna hands every trial to
exactly one worker; each worker draws from its own seed (`worker_seed`) with TPE's constant liar, so
running trials are not proposed again; `sweep.exp_remote` pushes each finished experiment to a git
remote, from which `--apply` pulls the best one when another worker ran it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import optuna
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.dvc_runner import DvcSession, ProjectLock, StageFailed, failure_reason, find_root, run_dvc
from flows.report import sweep_markdown
from pipeline.config import FlowParams, PruningParams, SweepParams, load_section
from pipeline.dag import StageSpec
from pipeline.sweep_space import (
    decode_params,
    display_storage,
    metric,
    read_curve,
    suggest,
    to_overrides,
    worker_seed,
)

EXP_TMP_GLOBS = ("standalone/tmp*", "tmp*")  # where `dvc exp run --temp` works (.dvc/tmp/exps/...)


def default_storage(root: Path) -> str:
    """SQLite file outside the DVC-tracked tree (`.optuna/` is gitignored and dvcignored)."""
    (root / ".optuna").mkdir(exist_ok=True)
    return f"sqlite:///{root / '.optuna' / 'study.db'}"


class CurveWatcher:
    """`stop` callback for run_dvc: feeds new curve rows to the trial, returns True to prune."""

    def __init__(self, root: Path, pruning: PruningParams, trial: optuna.Trial, sign: float, producer: str) -> None:
        self.root, self.pruning, self.trial, self.sign, self.producer = root, pruning, trial, sign, producer
        self.since: float | None = None  # armed once the producing stage really starts (outs removed)
        self.last_step = -1
        self.reported = 0

    def observe(self, line: str) -> None:
        """DVC logs `Running stage 'X':` after removing X's old outs (and after a run-cache miss)."""
        if line.startswith(f"Running stage '{self.producer}'"):
            self.since = time.time()

    def _curve_file(self) -> Path | None:
        if self.since is None:
            return None
        base = self.root / ".dvc" / "tmp" / "exps"
        found = [p for g in EXP_TMP_GLOBS for p in base.glob(f"{g}/{self.pruning.file}")]
        fresh = [p for p in found if p.stat().st_mtime >= self.since - 0.5]
        return max(fresh, key=lambda p: p.stat().st_mtime) if fresh else None

    def __call__(self) -> bool:
        path = self._curve_file()
        if path is None:
            return False
        try:
            rows = read_curve(path.read_text(), self.pruning.metric)
        except OSError:
            return False
        new = [(step, value) for step, value in rows if step > self.last_step]
        for step, value in new:
            self.trial.report(self.sign * value, step)
            self.last_step = step
        self.reported += len(new)
        return bool(new) and self.trial.should_prune()


def curve_producer(stages: list[StageSpec], path: str) -> str | None:
    """The stage whose outs hold the pruning curve file (it is rewritten when that stage runs)."""
    for stage in stages:
        if any(path == out or path.startswith(out.rstrip("/") + "/") for out in stage.outs):
            return stage.name
    return None


@task(name="dvc-exp-trial", task_run_name="trial-{number}", cache_policy=NO_CACHE, persist_result=False)
def run_trial(project: str, number: int, exp_name: str, overrides: list[str], params: SweepParams,
              trial: Any = None, curve_stage: str | None = None) -> dict[str, Any]:  # fmt: skip
    """One `dvc exp run --temp`; returns {'state': complete|pruned, 'value', 'report'} or raises."""
    logger = get_run_logger()
    root = Path(project)
    args = ["exp", "run", "--temp", "-n", exp_name, *[a for o in overrides for a in ("-S", o)]]
    args += [params.target] if params.target else []
    logger.info("dvc %s", " ".join(args))
    watcher = None
    if params.pruning.enabled and trial is not None and curve_stage:
        sign = 1.0 if params.pruning.direction == params.direction else -1.0
        watcher = CurveWatcher(root, params.pruning, trial, sign, curve_stage)

    def on_line(_stream: str, line: str) -> None:
        logger.info(line)
        if watcher is not None:
            watcher.observe(line)

    result = run_dvc(args, root, on_line, params.trial_timeout_s, stop=watcher, poll_s=params.pruning.poll_s)
    if result.stopped and watcher is not None:
        logger.warning("trial %d pruned at step %d (median rule); its run was interrupted", number, watcher.last_step)
        return {"state": "pruned", "step": watcher.last_step}
    if result.timed_out:
        raise StageFailed(f"trial {number} timed out after {params.trial_timeout_s:.0f} s")
    if result.returncode != 0:
        raise StageFailed(f"trial {number} ({exp_name}) failed: {failure_reason(result)}")
    import dvc.api

    report = json.loads(dvc.api.read(params.objective_file, repo=str(root), rev=exp_name))
    extra = {}
    for key in params.report:
        try:
            extra[key] = metric(report, key)
        except (KeyError, ValueError):
            continue
    return {"state": "complete", "value": metric(report, params.objective), "report": extra}


def local_experiments(root: Path) -> set[str]:
    """Names of the DVC experiments in this checkout (git refs under refs/exps)."""
    out = subprocess.run(["git", "for-each-ref", "--format=%(refname:lstrip=-1)", "refs/exps"], cwd=root,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return set(out.split())


def share_experiment(root: Path, remote: str, exp_name: str, logger: Any) -> None:
    """`dvc exp push REMOTE EXP` (the commit, and its cached outputs when a DVC remote is set)."""
    result = run_dvc(["exp", "push", remote, exp_name], root, lambda _s, ln: logger.info(ln))
    if result.returncode != 0:
        raise StageFailed(f"dvc exp push {remote} {exp_name} failed: {failure_reason(result)}")


def fetch_experiment(root: Path, remote: str | None, exp_name: str, logger: Any) -> None:
    """Make sure `exp_name` is in this checkout: `dvc exp pull REMOTE EXP` when another worker ran it."""
    if exp_name in local_experiments(root):
        return
    if not remote:
        raise StageFailed(f"experiment {exp_name} was run in another workspace and sweep.exp_remote is not set: "
                          "set it to a git remote all workers push to")  # fmt: skip
    result = run_dvc(["exp", "pull", remote, exp_name], root, lambda _s, ln: logger.info(ln))
    if result.returncode != 0:
        raise StageFailed(f"dvc exp pull {remote} {exp_name} failed: {failure_reason(result)}")


def _trial_row(t: optuna.trial.FrozenTrial, params: SweepParams) -> dict[str, Any]:
    return {"number": t.number, "state": t.state.name.lower(), "value": t.value,
            "exp_name": t.user_attrs.get("exp_name", ""), "params": decode_params(t.params, params.space),
            **({"error": t.user_attrs["error"]} if "error" in t.user_attrs else {})}  # fmt: skip


@flow(name="ijepa-sweep", log_prints=True)
def ijepa_sweep(
    project: str = ".",
    n_trials: int | None = None,
    study: str | None = None,
    storage: str | None = None,
    seed: int | None = None,
    apply: bool = False,
) -> dict[str, Any]:
    """Run `n_trials` more trials of the study (created or resumed), report the best experiment."""
    logger = get_run_logger()
    root = find_root(project)
    params: SweepParams = load_section("sweep", root / "params.yaml", SweepParams)
    flow_params: FlowParams = load_section("flow", root / "params.yaml", FlowParams)
    if not params.space:
        raise ValueError(f"{root / 'params.yaml'}: sweep.space is empty; declare the search space there")
    session = DvcSession(root)
    stages = session.stages()
    session.close()
    if params.target and params.target not in {s.name for s in stages}:
        raise ValueError(f"sweep.target {params.target!r} is not a stage; stages: {', '.join(s.name for s in stages)}")
    curve_stage = curve_producer(stages, params.pruning.file)
    if params.pruning.enabled and curve_stage is None:
        logger.warning("pruning off: no stage outputs %s (sweep.pruning.file)", params.pruning.file)
    study_name = study or params.study
    storage = storage or params.storage
    shared = storage is not None  # an RDB other workers may use too; the default SQLite file is ours alone
    storage = storage or default_storage(root)
    workspace = f"{socket.gethostname()}:{root}"
    sampler = optuna.samplers.TPESampler(seed=worker_seed(params.seed if seed is None else seed, str(root), shared),
                                         constant_liar=shared)  # fmt: skip
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=params.pruning.n_startup_trials,
                                          n_warmup_steps=params.pruning.n_warmup_steps)
              if params.pruning.enabled else optuna.pruners.NopPruner())  # fmt: skip
    opt = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner,
                              direction=params.direction, load_if_exists=True)  # fmt: skip
    with ProjectLock(root, flow_params.lock_timeout_s):
        for _ in range(params.n_trials if n_trials is None else n_trials):
            trial = opt.ask()
            values = suggest(trial, params.space)
            overrides = to_overrides(values)
            exp_name = f"trial-{study_name}-{trial.number}"
            trial.set_user_attr("exp_name", exp_name)
            trial.set_user_attr("overrides", overrides)
            trial.set_user_attr("workspace", workspace)
            state = run_trial(str(root), trial.number, exp_name, overrides, params, trial, curve_stage,
                              return_state=True)  # fmt: skip
            if not state.is_completed():
                trial.set_user_attr("error", (state.message or "failed")[:2000])
                opt.tell(trial, state=optuna.trial.TrialState.FAIL)
                logger.warning("trial %d failed, going on: %s", trial.number, state.message)
                continue
            outcome = state.result()
            if outcome["state"] == "pruned":
                opt.tell(trial, state=optuna.trial.TrialState.PRUNED)
                continue
            for key, value in outcome["report"].items():
                trial.set_user_attr(key, value)
            opt.tell(trial, outcome["value"])
            logger.info("trial %d = %s: %s = %.4f", trial.number, exp_name, params.objective, outcome["value"])
            if params.exp_remote:
                share_experiment(root, params.exp_remote, exp_name, logger)
        complete = opt.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        best = opt.best_trial if complete else None
        summary: dict[str, Any] = {
            "study": study_name, "storage": display_storage(storage), "objective": params.objective,
            "direction": params.direction,
            "trials": [_trial_row(t, params) for t in opt.trials],
            "best": _trial_row(best, params) if best else None,
        }  # fmt: skip
        best_exp = best.user_attrs.get("exp_name") if best is not None else None
        if best is not None:
            logger.info("best: trial %d = experiment %s, %s = %.4f", best.number, best_exp, params.objective,
                        best.value)  # fmt: skip
        if apply and best_exp:
            fetch_experiment(root, params.exp_remote, best_exp, logger)
            result = run_dvc(["exp", "apply", best_exp], root, lambda _s, ln: logger.info(ln))
            if result.returncode != 0:
                raise StageFailed(f"dvc exp apply {best_exp} failed: {failure_reason(result)}")
            summary["applied"] = best_exp
    create_markdown_artifact(markdown=sweep_markdown(summary), key="ijepa-sweep-report",
                             description=f"Optuna study {study_name}: trials as DVC experiments")  # fmt: skip
    return summary
