"""Two `ijepa sweep` workers share one Optuna study on a real PostgreSQL server (mini project).

Each worker is its own process in its own git clone (trials run as `dvc exp run --temp` there) and
pushes its finished experiments to the clones' origin (`sweep.exp_remote`). Enqueued trials make the
outcome of every trial known in advance whichever worker draws it: two complete, one fails, one is
pruned while it runs; every trial runs exactly once, and `--apply` in the other worker's checkout
pulls and applies the best experiment.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, project_env, run
from tests.mini_project import PARAMS, git_commit, make_mini_project
from tests.postgres_server import PostgresServer, start_postgres
from tests.prefect_server import PrefectServer

IJEPA = str(Path(sys.executable).parent / "ijepa")
STEPS = 30


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = start_postgres()
    yield server
    server.stop()


def exp_names(repo: Path) -> list[str]:
    out = run(["git", "for-each-ref", "--format=%(refname:lstrip=-1)", "refs/exps"], repo).stdout
    return sorted(r for r in out.split() if r.startswith("trial-"))


def sweep_params() -> dict:
    params = yaml.safe_load(yaml.safe_dump(PARAMS))
    params["train"].update(steps=STEPS)
    params["sweep"]["exp_remote"] = "origin"
    params["sweep"]["pruning"].update(enabled=True, n_startup_trials=1, n_warmup_steps=1, poll_s=0.3)
    params["sweep"]["space"] = {
        "train.lr": {"type": "categorical", "choices": [0.01, 0.1]},
        "train.fail": {"type": "categorical", "choices": [False, True]},
        "train.sleep": {"type": "categorical", "choices": [0.0, 0.3]},
        "evaluate.k": {"type": "int", "low": 1, "high": 9},
    }
    return params


def seed_study(url: str, name: str) -> None:
    """A finished reference trial with the loss curve of lr=0.01 (so the median rule keeps equal or
    better curves and prunes lr=0.1), then four enqueued trials with known outcomes."""
    import optuna
    from optuna.distributions import CategoricalDistribution, IntDistribution

    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    dists = {"train.lr": CategoricalDistribution([0.01, 0.1]), "train.fail": CategoricalDistribution([False, True]),
             "train.sleep": CategoricalDistribution([0.0, 0.3]), "evaluate.k": IntDistribution(1, 9)}  # fmt: skip
    study.add_trial(optuna.trial.create_trial(
        params={"train.lr": 0.01, "train.fail": False, "train.sleep": 0.0, "evaluate.k": 1}, distributions=dists,
        value=0.5, intermediate_values={s: -1.0 / (s + 1) for s in range(STEPS)}))  # fmt: skip
    outcomes = [(0.01, False, 0.0, 5), (0.1, False, 0.3, 5), (0.01, True, 0.0, 5), (0.01, False, 0.0, 3)]
    for lr, fail, sleep, k in outcomes:
        study.enqueue_trial({"train.lr": lr, "train.fail": fail, "train.sleep": sleep, "evaluate.k": k})


@pytest.mark.slow
def test_two_workers_share_a_postgres_study(prefect_server: PrefectServer, postgres: PostgresServer,
                                            tmp_path: Path) -> None:  # fmt: skip
    import optuna

    origin = make_mini_project(tmp_path / "origin", sweep_params())
    # the workers share cached outputs through a DVC remote (a directory here, S3 in docs/ORCHESTRATION.md)
    run([sys.executable, "-m", "dvc", "remote", "add", "-d", "shared", str(tmp_path / "dvc-remote")], origin)
    git_commit(origin, "shared DVC remote")
    workers = [tmp_path / "w0", tmp_path / "w1"]
    for w in workers:
        run(["git", "clone", "-q", str(origin), str(w)], tmp_path)
    seed_study(postgres.url, "pg")
    env = {**project_env(), **prefect_server.env()}
    logs = [open(tmp_path / f"{w.name}.log", "w") for w in workers]  # noqa: SIM115 - closed below
    procs = [subprocess.Popen([IJEPA, "sweep", "--project", str(w), "--storage", postgres.url, "--study", "pg",
                               "--n-trials", "2"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
             for w, log in zip(workers, logs, strict=True)]  # fmt: skip
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p, log in zip(procs, logs, strict=True):
            if p.poll() is None:
                p.kill()
            log.close()
    outputs = [(tmp_path / f"{w.name}.log").read_text() for w in workers]
    assert codes == [0, 0], "\n\n".join(o[-3000:] for o in outputs)

    study = optuna.load_study(study_name="pg", storage=postgres.url)
    trials = study.trials[1:]  # [0] is the seeded reference
    assert sorted(t.number for t in trials) == [1, 2, 3, 4]
    by_params = {(t.params["train.lr"], t.params["train.fail"], t.params["train.sleep"], t.params["evaluate.k"]): t
                 for t in trials}  # fmt: skip
    assert len(by_params) == 4  # every enqueued trial ran, none twice
    state = {key: t.state.name for key, t in by_params.items()}
    assert state == {(0.01, False, 0.0, 5): "COMPLETE", (0.1, False, 0.3, 5): "PRUNED",
                     (0.01, True, 0.0, 5): "FAIL", (0.01, False, 0.0, 3): "COMPLETE"}  # fmt: skip
    assert "deliberately broken" in by_params[(0.01, True, 0.0, 5)].user_attrs["error"]
    assert max(by_params[(0.1, False, 0.3, 5)].intermediate_values) < STEPS - 5  # stopped while running
    ran_in = {t.number: t.user_attrs["workspace"].rsplit(":", 1)[1] for t in trials}
    assert sorted(ran_in.values()) == sorted([str(workers[0])] * 2 + [str(workers[1])] * 2)  # 2 trials each

    complete = sorted(t.user_attrs["exp_name"] for t in trials if t.state.name == "COMPLETE")
    local = [exp_names(w) for w in workers]
    assert sorted(local[0] + local[1]) == complete  # each experiment exists once, where it ran
    assert exp_names(origin) == complete  # and was pushed to the shared remote

    best = study.best_trial
    assert best.params["evaluate.k"] == 5 and best.value == pytest.approx(1.0)
    other = workers[1] if ran_in[best.number] == str(workers[0]) else workers[0]
    assert best.user_attrs["exp_name"] not in exp_names(other)
    proc = subprocess.run([IJEPA, "sweep", "--project", str(other), "--storage", postgres.url, "--study", "pg",
                           "--n-trials", "0", "--apply"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"best: trial {best.number} = experiment {best.user_attrs['exp_name']}" in proc.stdout
    assert "[applied]" in proc.stdout
    applied = yaml.safe_load((other / "params.yaml").read_text())
    assert applied["evaluate"]["k"] == 5 and applied["train"]["lr"] == 0.01
    assert (other / "reports" / "eval_linear.json").exists()


def test_storage_password_is_hidden_and_worker_seeds_differ() -> None:
    from pipeline.sweep_space import display_storage, worker_seed

    shown = display_storage("postgresql+psycopg2://optuna:s3cret@db.internal:5432/studies")
    assert "s3cret" not in shown and shown.startswith("postgresql+psycopg2://optuna:***@db.internal")
    assert display_storage("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert worker_seed(7, "/srv/a", shared=False) == worker_seed(7, "/srv/b", shared=False) == 7
    a, b = worker_seed(7, "/srv/a", shared=True), worker_seed(7, "/srv/b", shared=True)
    assert a != b and a == worker_seed(7, "/srv/a", shared=True)  # distinct per workspace, stable per workspace
