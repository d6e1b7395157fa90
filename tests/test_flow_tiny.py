"""The flow over the real I-JEPA stages of `tiny_project` (fake data, TINY params), real Prefect server.

Runs every stage that can run in this checkout (its module and source deps exist), up to the deepest
one whose ancestors can all run: `shard` at least, the whole pipeline once every stage is written.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.dag import StageSpec, ancestors, stages_from_yaml, topological_order
from tests.conftest import set_params
from tests.prefect_server import PrefectServer


def deepest_runnable(project: Path, stages: list[StageSpec]) -> str:
    produced = [o for s in stages for o in s.outs]

    def runnable(stage: StageSpec) -> bool:
        module = re.search(r"-m\s+(stages\.\w+)", stage.cmd)
        if module and not (project / (module.group(1).replace(".", "/") + ".py")).exists():
            return False
        sources = [d for d in stage.deps if not any(d == o or d.startswith(o + "/") for o in produced)]
        return all((project / d).exists() for d in sources)

    ok = {s.name for s in stages if runnable(s)}
    order = topological_order(stages)
    return [n for n in order if n in ok and ancestors(stages, n) <= ok][-1]


@pytest.mark.slow
def test_flow_over_the_real_stages(prefect_api: PrefectServer, tiny_project: Path) -> None:
    from prefect.artifacts import Artifact

    from flows.pipeline import ijepa_pipeline

    register = yaml.safe_load((tiny_project / "params.yaml").read_text()).get("register", {})
    if "enforce_gate" in register:  # tiny data: record the gate, do not fail on it
        set_params(tiny_project, {"register": {"enforce_gate": False}})
    stages = stages_from_yaml(tiny_project / "dvc.yaml")
    target = deepest_runnable(tiny_project, stages)
    expected = topological_order(stages, target)
    assert expected[0] == "shard"

    first = ijepa_pipeline(project=str(tiny_project), target=target)
    assert [(s["stage"], s["status"]) for s in first["stages"]] == [(n, "ran") for n in expected]
    assert (tiny_project / "reports" / "shard.json").exists()

    again = ijepa_pipeline(project=str(tiny_project), target=target)
    assert [s["status"] for s in again["stages"]] == ["cached"] * len(expected)
    report = Artifact.get("ijepa-pipeline-report")
    assert report is not None and "| shard | cached |" in report.data
    if "eval_linear" in expected:
        assert "| linear.test_top1 |" in report.data
    if "report" in expected:  # the figures, inline, so they show wherever the UI runs
        figures = Artifact.get("ijepa-pipeline-figures")
        assert figures is not None and figures.data.count("](data:image/png;base64,") == 4
