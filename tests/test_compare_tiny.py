"""Comparing and looking, on a real tiny project: `dvc exp show` that fits, offline plots, figures in the card.

One module-scoped tiny project (fake data, TINY params with kNN k = 10 and 10-shot as by default):
`dvc repro`, commit, then `dvc exp run -S train.epochs=2`, so there are two runs to compare. The plots
pages are opened in headless Chromium inside a network namespace (tests/browser.py); a page that needs
the network stays empty there, which the control test shows with DVC's default (CDN) page.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.browser import dump_dom
from tests.conftest import ROOT, VENV_BIN, dvc, make_project, run

pytestmark = pytest.mark.slow

PLOTS = [name for item in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"] for name in item]


OVERRIDES = {"register": {"enforce_gate": False}, "eval": {"knn_k": [10], "lowshot_k": [1, 10]}}


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory, fake_fmnist: Path) -> Path:
    """A tiny project (TINY params; the default's k = 10 settings), repro'd and committed, plus one experiment."""
    from configobj import ConfigObj  # DVC's own config format

    project = make_project(tmp_path_factory.mktemp("compare") / "project", fake_fmnist, OVERRIDES)
    template = ConfigObj(str(ROOT / ".dvc/config"))["plots"]["html_template"]
    dvc(project, "config", "--local", "plots.html_template", template)  # .dvc/config.local: not in git
    run([str(Path(VENV_BIN) / "ijepa"), "plots-template"], project)
    dvc(project, "repro")
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "baseline run"], project)
    dvc(project, "exp", "run", "-S", "train.epochs=2", "-n", "ep2")
    return project


def headline_cols(project: Path, group: str) -> list[str]:
    data = json.loads((project / "reports/headline.json").read_text())
    return [f"{group}.{k}" for k in data[group] if k != "common"]


def md_header(text: str) -> list[str]:
    return [c.strip() for c in text.splitlines()[0].strip().strip("|").split("|")]


def test_headline_and_training_time_are_the_metrics_and_exp_show_stays_narrow(compared: Path) -> None:
    rows = json.loads(dvc(compared, "exp", "show", "--json").stdout)
    metrics = [r["data"]["metrics"] for r in rows]
    files = {"reports/headline.json", "reports/timings/pretrain.json"}
    assert all(set(m) == files for m in metrics), [list(m) for m in metrics]
    columns = {k for m in metrics for k in _flat(m["reports/headline.json"]["data"])}
    wanted = {c for g in ("encoder", "random", "raw") for c in headline_cols(compared, g)}
    assert len(columns) <= 30 and len(wanted) >= 15 and wanted | {"encoder.common"} <= columns
    assert {"encoder.knn10", "random.shot10", "raw.pct1", "gate.passed"} <= columns
    full = md_header(dvc(compared, "exp", "show", "--no-pager", "--md").stdout)
    assert full[:2] == ["Experiment", "Created"]
    assert [c for c in full if c in columns] == full[2 : 2 + len(columns)]  # the headline comes first


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in data.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_only_changed_fits_and_shows_the_headline(compared: Path) -> None:
    changed = md_header(dvc(compared, "exp", "show", "--only-changed", "--no-pager", "--md").stdout)
    assert len(changed) <= 45, changed
    assert {"pretrain.loss", "wall_s", "images_per_s", "train.epochs"} <= set(changed)
    assert any(c.startswith("encoder.") for c in changed), changed
    assert not any(c.startswith(("random.", "raw.")) for c in changed)  # baselines do not move with training
    kept = md_header(dvc(compared, "exp", "show", "--only-changed", "--keep", r"^(random|raw)\.", "--no-pager",
                         "--md").stdout)  # fmt: skip
    baselines = headline_cols(compared, "random") + headline_cols(compared, "raw")
    assert len(kept) <= 45 and set(baselines) <= set(kept), kept
    diff = dvc(compared, "exp", "diff", "HEAD", "ep2", "--md").stdout
    assert "reports/headline.json" in diff and "pretrain.loss" in diff and "train.epochs" in diff


def drawn_charts(dom: str) -> dict[str, int]:
    """Plot id -> number of drawn line paths (SVG `mark-line` groups holding a path with 2+ points)."""
    found = {}
    starts = sorted((dom.index(f'id="{p}"'), p) for p in PLOTS if f'id="{p}"' in dom)
    for (start, name), (end, _) in zip(starts, [*starts[1:], (len(dom), "")], strict=True):
        chunk = dom[start:end]
        lines = re.findall(r'class="mark-line role-mark[^"]*"[^>]*>((?:<path[^>]*>\s*</path>)+)', chunk)
        paths = [d for group in lines for d in re.findall(r' d="(M[^"]+)"', group) if "L" in d]
        found[name] = len(paths) if 'class="marks"' in chunk else 0
    return found


def test_plots_show_draws_every_chart_offline(compared: Path, tmp_path: Path) -> None:
    dvc(compared, "plots", "show", "-o", str(tmp_path / "show"))
    page = tmp_path / "show" / "index.html"
    html = page.read_text()
    assert not re.search(r"<script[^>]+src=", html), "the page still loads a script from elsewhere"
    charts = drawn_charts(dump_dom(page, tmp_path / "profile"))
    assert set(charts) == set(PLOTS) and all(n >= 1 for n in charts.values()), charts
    assert charts["lowshot"] >= 3 and charts["accuracy_vs_step"] >= 2  # one line per encoder/baseline, per split


def test_plots_diff_draws_both_revisions_offline(compared: Path, tmp_path: Path) -> None:
    dvc(compared, "plots", "diff", "HEAD", "ep2", "-o", str(tmp_path / "diff"))
    charts = drawn_charts(dump_dom(tmp_path / "diff" / "index.html", tmp_path / "profile"))
    assert set(charts) == set(PLOTS), charts
    assert charts["loss"] >= 2 and charts["lowshot"] >= 6, charts  # a line per revision (and per series)


def test_control_dvcs_default_page_stays_blank_offline(compared: Path, tmp_path: Path) -> None:
    from dvc_render.html import PAGE_HTML

    (tmp_path / "cdn.html").write_text(PAGE_HTML)
    dvc(compared, "plots", "show", "--html-template", str(tmp_path / "cdn.html"), "-o", str(tmp_path / "cdn"))
    page = tmp_path / "cdn" / "index.html"
    assert "cdn.jsdelivr.net" in page.read_text()
    charts = drawn_charts(dump_dom(page, tmp_path / "profile", budget_ms=5000))
    assert sum(charts.values()) == 0, charts


def test_model_card_embeds_the_figures(compared: Path) -> None:
    card = (compared / "registry" / "model_card.md").read_text()
    links = re.findall(r"!\[[^\]]+\]\(([^)]+\.png)\)", card)
    assert len(links) >= 3, card
    for link in links:
        png = compared / "registry" / link
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000, link
    assert "IJepaModel.from_pretrained" in card and "timm.create_model" in card
    tracked = run(["git", "ls-files", "registry/figures", "reports/headline.json"], compared).stdout.split()
    assert len(tracked) >= 4 and "reports/headline.json" in tracked  # committed with the run (cache: false)
