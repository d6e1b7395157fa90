"""`ijepa sweep`: an Optuna study whose trials are DVC experiments (mini project, real Prefect server)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT, project_env
from tests.mini_project import PARAMS, make_mini_project
from tests.prefect_server import PrefectServer


def exp_refs(project: Path) -> list[str]:
    out = subprocess.run(["git", "for-each-ref", "--format=%(refname:lstrip=-1)", "refs/exps"], cwd=project,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return sorted(r for r in out.split() if r.startswith("trial-"))


def load_study(project: Path, name: str):  # noqa: ANN201 - optuna.Study
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{project / '.optuna' / 'study.db'}")


def test_cli_sweep_three_trials_are_three_experiments(prefect_server: PrefectServer, tmp_path: Path) -> None:
    project = make_mini_project(tmp_path / "mini")
    env = {**project_env(), **prefect_server.env()}
    cmd = [str(Path(sys.executable).parent / "ijepa"), "sweep", "--project", str(project), "--n-trials", "3", "--apply"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    assert exp_refs(project) == ["trial-mini-0", "trial-mini-1", "trial-mini-2"]
    import dvc.api

    drawn = {(p["train"]["lr"], p["evaluate"]["k"])
             for p in (dvc.api.params_show(repo=str(project), rev=f"trial-mini-{i}") for i in range(3))}  # fmt: skip
    assert len(drawn) == 3  # three different parameter sets

    study = load_study(project, "mini")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    for t in study.trials:  # trial <-> experiment, value = the experiment's validation metric
        assert t.user_attrs["exp_name"] == f"trial-mini-{t.number}"
        rev = f"trial-mini-{t.number}"
        report = yaml.safe_load(dvc.api.read("reports/eval_linear.json", repo=str(project), rev=rev))
        assert t.value == report["linear.val_top1"] and t.user_attrs["linear.test_top1"] == report["linear.test_top1"]
        assert t.params["train.lr"] == drawn_lr(project, t.number)
    best = study.best_trial
    assert f"best: trial {best.number} = experiment trial-mini-{best.number}" in proc.stdout
    assert "[applied]" in proc.stdout  # --apply: the workspace now holds the best experiment's params
    applied = yaml.safe_load((project / "params.yaml").read_text())
    assert applied["train"]["lr"] == best.params["train.lr"] and applied["evaluate"]["k"] == best.params["evaluate.k"]


def drawn_lr(project: Path, number: int) -> float:
    import dvc.api

    return dvc.api.params_show(repo=str(project), rev=f"trial-mini-{number}")["train"]["lr"]


def test_failing_trial_is_recorded_and_the_sweep_goes_on(prefect_api: PrefectServer, tmp_path: Path) -> None:
    import optuna

    from flows.sweep import ijepa_sweep

    params = yaml.safe_load(yaml.safe_dump(PARAMS))
    params["sweep"]["space"] = {"train.fail": {"type": "categorical", "choices": [True, False]}}
    project = make_mini_project(tmp_path / "mini", params)
    storage = f"sqlite:///{tmp_path / 'study.db'}"  # any RDB URL works (param sweep.storage / --storage)
    study = optuna.create_study(study_name="f", storage=storage, direction="maximize")
    study.enqueue_trial({"train.fail": True})
    study.enqueue_trial({"train.fail": False})
    summary = ijepa_sweep(project=str(project), n_trials=2, study="f", storage=storage)
    states = [(t["number"], t["state"]) for t in summary["trials"]]
    assert states == [(0, "fail"), (1, "complete")]
    failed = optuna.load_study(study_name="f", storage=storage).trials[0]
    assert failed.state == optuna.trial.TrialState.FAIL
    assert "train: error: deliberately broken" in failed.user_attrs["error"]
    assert summary["best"]["exp_name"] == "trial-f-1" and exp_refs(project) == ["trial-f-1"]


def test_median_pruner_stops_a_bad_trial_while_it_runs(prefect_api: PrefectServer, tmp_path: Path) -> None:
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution

    from flows.sweep import curve_producer, ijepa_sweep
    from pipeline.dag import stages_from_yaml

    real = yaml.safe_load((ROOT / "params.yaml").read_text())["sweep"]["pruning"]["file"]
    assert curve_producer(stages_from_yaml(ROOT / "dvc.yaml"), real) == "pretrain"  # real pipeline: dvclive curve
    params = yaml.safe_load(yaml.safe_dump(PARAMS))
    params["train"].update(steps=40, sleep=0.25)  # ~10 s if it ran to the end
    params["sweep"]["pruning"].update(enabled=True, n_startup_trials=1, n_warmup_steps=1, poll_s=0.3)
    project = make_mini_project(tmp_path / "mini", params)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="p", storage=storage, direction="maximize")
    dists = {"train.lr": FloatDistribution(0.001, 0.1, log=True), "evaluate.k": IntDistribution(1, 9)}
    study.add_trial(optuna.trial.create_trial(  # a finished trial whose loss curve was 0 (perfect)
        params={"train.lr": 0.01, "evaluate.k": 5}, distributions=dists, value=1.0,
        intermediate_values={step: -0.0 for step in range(40)}))  # fmt: skip
    summary = ijepa_sweep(project=str(project), n_trials=1, study="p", storage=storage)
    pruned = optuna.load_study(study_name="p", storage=storage).trials[1]
    assert pruned.state == optuna.trial.TrialState.PRUNED
    assert 1 <= max(pruned.intermediate_values) < 30  # stopped while the run was still going
    assert summary["trials"][1]["state"] == "pruned" and exp_refs(project) == []
    assert not list((project / ".dvc" / "tmp" / "exps").glob("standalone/tmp*"))  # temp run dir cleaned up
