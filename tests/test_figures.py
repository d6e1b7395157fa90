"""Figures (pipeline/figures.py): offline PNGs of the curves, the same charts as dvc.yaml's plots."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.figures import FIGURES, FigureError, card_figures, read_rows, render_figures, vega_lite_spec
from tests.conftest import ROOT


def write_curves(root: Path) -> None:
    live = root / "reports/dvclive/plots/metrics"
    live.mkdir(parents=True)
    (live / "loss.tsv").write_text("step\tloss\n" + "".join(f"{s}\t{1 / s:.4f}\n" for s in range(2, 40, 2)))
    (live / "effective_rank.tsv").write_text("step\teffective_rank\n2\t3.5\n4\tnan\n6\t5.25\n")
    plots = root / "reports/plots"
    plots.mkdir(parents=True)
    lowshot = "k,encoder,random_init,raw_pixels\n1,0.3,0.2,0.4\n5,0.5,0.3,0.6\n10,0.6,0.4,0.7\n"
    (plots / "lowshot.csv").write_text(lowshot)
    (plots / "accuracy_vs_step.csv").write_text("step,linear_test_top1,linear_val_top1\n10,0.6,0.62\n20,0.7,0.71\n")


def test_every_figure_is_a_dvc_plot_with_the_same_title_axes_and_columns() -> None:
    plots = {name: spec for item in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
             for name, spec in item.items()}  # fmt: skip
    assert set(plots) == {f.name for f in FIGURES}
    for fig in FIGURES:
        spec = plots[fig.name]
        cols = spec["y"][fig.source]
        assert (spec["title"], spec["x"], spec["x_label"], spec["y_label"]) == (fig.title, fig.x, fig.x_label,
                                                                                fig.y_label)  # fmt: skip
        assert ([cols] if isinstance(cols, str) else cols) == list(fig.series)


def test_rows_keep_finite_values_and_specs_draw_one_line_per_series(tmp_path: Path) -> None:
    write_curves(tmp_path)
    rank = next(f for f in FIGURES if f.name == "effective_rank")
    rows = read_rows(tmp_path, rank)
    assert rows == [{"step": 2, "effective_rank": 3.5}, {"step": 4}, {"step": 6, "effective_rank": 5.25}]
    lowshot = next(f for f in FIGURES if f.name == "lowshot")
    spec = vega_lite_spec(lowshot, read_rows(tmp_path, lowshot))
    assert spec["title"] == lowshot.title and spec["encoding"]["x"]["title"] == lowshot.x_label
    assert {v["series"] for v in spec["data"]["values"]} == {"I-JEPA encoder", "random-init ViT", "raw pixels"}
    assert len(spec["data"]["values"]) == 9 and spec["encoding"]["x"]["scale"]["type"] == "log"


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    write_curves(tmp_path)
    loss = FIGURES[0]
    (tmp_path / loss.source).write_text("step\tvalue\n1\t2\n")
    with pytest.raises(FigureError, match=r"loss.tsv: no column\(s\) \['loss'\]"):
        read_rows(tmp_path, loss)
    (tmp_path / loss.source).write_text("step\tloss\n1\tfast\n")
    with pytest.raises(FigureError, match=r"loss.tsv:2: not a number"):
        read_rows(tmp_path, loss)
    (tmp_path / loss.source).write_text("step\tloss\n")
    with pytest.raises(FigureError, match="no data rows"):
        read_rows(tmp_path, loss)
    (tmp_path / loss.source).unlink()
    with pytest.raises(FigureError, match=r"reports/dvclive/plots/metrics/loss.tsv: not found"):
        render_figures(tmp_path)
    assert not (tmp_path / "registry").exists()  # every input is read before anything is written


def test_render_writes_one_drawn_png_per_figure(tmp_path: Path) -> None:
    write_curves(tmp_path)
    out = tmp_path / "registry/figures"
    out.mkdir(parents=True)
    (out / "old_chart.png").write_bytes(b"stale")
    written = render_figures(tmp_path)
    assert [p.name for p in written] == [f.file for f in FIGURES]
    assert sorted(p.name for p in out.iterdir()) == sorted(f.file for f in FIGURES)  # stale one removed
    for path in written:
        img = np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGB"))
        assert img.shape[0] > 200 and img.shape[1] > 400
        dark = (img.min(axis=2) < 128).mean()
        assert 0.005 < dark < 0.5, f"{path.name}: {dark:.3f} of the pixels drawn"  # text, axes and lines
    loss = np.asarray(Image.open(written[0]).convert("RGB")).astype(int)
    blue = (loss[..., 2] - loss[..., 0] > 60).sum()  # vega's first category colour is a blue
    assert blue > 200, "no line drawn"
    assert card_figures(tmp_path) == [(f.title, f"figures/{f.file}") for f in FIGURES]
