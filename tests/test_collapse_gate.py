"""The gate refuses a collapsed encoder: a real tiny pipeline trained with a deliberately collapsing
config (EMA momentum 0 -- the target encoder is the context encoder, no slow teacher -- and lr 1e-2: the
trivial constant solution of the JEPA loss) must fail `register` with a message that names the effective
rank, with the default architecture and `register.min_effective_rank` of params.yaml. (EMA 1.0 from step
0 is no test here: the target stays at its random init, whose rank on the tests' synthetic images is ~11.)"""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import ROOT, dvc, set_params
from tests.registry_helpers import project_copy, read_json


@pytest.mark.slow
def test_register_refuses_a_collapsed_encoder(tmp_path_factory: pytest.TempPathFactory) -> None:
    defaults = yaml.safe_load((ROOT / "params.yaml").read_text())
    threshold = defaults["register"]["min_effective_rank"]
    assert threshold is not None and threshold > 2.0  # enforced in the default run
    project = project_copy(tmp_path_factory, "collapse")
    entry = (project / "registry/entry.json").read_bytes()
    set_params(
        project,
        {
            "model": defaults["model"],
            "train": {"ema": [0.0, 0.0], "lr": 0.01, "start_lr": 0.01, "epochs": 4},
            "register": {"min_effective_rank": threshold},
        },
    )
    failed = dvc(project, "repro", "register", check=False)
    assert failed.returncode != 0
    out = failed.stdout + failed.stderr
    report = read_json(project / "reports/eval_linear.json")
    rank = report["collapse.effective_rank"]
    assert rank < threshold
    assert rank < 0.5 * report["baseline.random.collapse.effective_rank"]  # worse than untrained
    assert report["collapse.common_share"] > 0.99
    assert "quality gate failed" in out and "collapse.effective_rank" in out
    assert f"required >= {threshold:.4f} (register.min_effective_rank) [UNMET]" in out
    assert (project / "registry/entry.json").read_bytes() == entry  # the passing entry is kept
