"""The `shard` stage through real DVC: outputs, caching, and re-run on a `data` param change."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import dvc, set_params


def test_dvc_repro_shard_caches_and_reruns_on_data_param_change(tiny_project: Path) -> None:
    first = dvc(tiny_project, "repro", "shard")
    assert "Running stage 'shard'" in first.stdout
    report = json.loads((tiny_project / "reports/shard.json").read_text())
    assert report["count"] == {"train": 500, "val": 100, "test": 200, "total": 800}
    assert len(list((tiny_project / "data/shards/train").glob("*.tar"))) == report["shards"]["train"] == 4

    second = dvc(tiny_project, "repro", "shard")
    assert "Running stage 'shard'" not in second.stdout and "didn't change, skipping" in second.stdout

    set_params(tiny_project, {"validate": {"size_tolerance": 0.5}})  # not read by `shard`
    assert "Running stage 'shard'" not in dvc(tiny_project, "repro", "shard").stdout

    set_params(tiny_project, {"data": {"shard_max_count": 250}})
    third = dvc(tiny_project, "repro", "shard")
    assert "Running stage 'shard'" in third.stdout
    assert json.loads((tiny_project / "reports/shard.json").read_text())["shards"]["train"] == 2

    metrics = dvc(tiny_project, "metrics", "show", "reports/shard.json").stdout
    assert "count.train" in metrics and "500" in metrics


def test_shard_stage_missing_source_is_a_clear_error(tiny_project: Path) -> None:
    set_params(tiny_project, {"data": {"root": str(tiny_project / "absent")}})
    proc = dvc(tiny_project, "repro", "shard", check=False)
    assert proc.returncode != 0
    assert "apt-get install -y dataset-fashion-mnist" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
