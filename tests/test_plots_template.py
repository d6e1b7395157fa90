"""The offline page of `dvc plots show` (pipeline/plots_template.py); it is drawn in tests/test_compare_tiny.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.plots_template import PlotsTemplateError, build_template, template_path, write_template
from tests.conftest import ROOT, project_env


def test_the_project_config_points_dvc_at_a_gitignored_template() -> None:
    path = template_path(ROOT)
    assert path.parent == ROOT / ".dvc" and path.suffix == ".html"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT, env=project_env())
    assert ignored.returncode == 0, f"{path} should be gitignored (generated, ~0.9 MB)"


def test_template_inlines_the_libraries_and_keeps_dvcs_placeholders(tmp_path: Path) -> None:
    page = build_template()
    assert page.count("{plot_divs}") == 1 and page.count("{refresh_tag}") == 1
    assert "{scripts}" not in page  # where DVC would insert its CDN <script src=...> tags
    assert not re.search(r"<script[^>]+src=", page)
    assert len(page) > 300_000 and "vegaEmbed" in page and re.search(r'renderer:\s*"svg"', page)
    assert page.count("</script>") == 1  # the bundle cannot end its own element early
    written = write_template(tmp_path, tmp_path / "t.html")
    assert written.read_text() == page


def test_missing_setting_is_a_clear_error(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, env=project_env(), check=True)
    with pytest.raises(PlotsTemplateError, match=r"no plots.html_template set"):
        template_path(tmp_path)
