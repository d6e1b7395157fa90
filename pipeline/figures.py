"""PNG figures of the curves people look at, rendered offline into `registry/figures/`.

One `Figure` per curve (pretraining loss, the collapse monitor, accuracy vs labels per class, accuracy vs
pretraining step), each read from the file a stage already writes. The same four curves are declared as
DVC top-level `plots` in dvc.yaml with the same titles and axis labels (tests/test_figures.py checks that
they agree), so `dvc plots show` and the model card show the same thing. Rendering: a Vega-Lite line
chart per figure, turned into PNG by vl-convert (Vega in an embedded JS engine, no browser, no network).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIGURES_DIR = Path("registry/figures")
VEGA_LITE_SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"  # an identifier, never fetched
DVCLIVE = "reports/dvclive/plots/metrics"


class FigureError(ValueError):
    """A figure's data file is missing, unreadable or lacks the columns the figure plots."""


@dataclass(frozen=True)
class Figure:
    """One line chart: `series` maps a column of `source` to its legend label."""

    name: str
    title: str
    source: str
    x: str
    series: dict[str, str]
    x_label: str
    y_label: str
    log_x: bool = False

    @property
    def file(self) -> str:
        return f"{self.name}.png"


FIGURES: tuple[Figure, ...] = (
    Figure("loss", "Pretraining loss", f"{DVCLIVE}/loss.tsv", "step", {"loss": "I-JEPA loss"},
           "optimiser step", "prediction loss (mean over target patches)"),
    Figure("effective_rank", "Collapse monitor: effective rank of the pooled target features",
           f"{DVCLIVE}/effective_rank.tsv", "step", {"effective_rank": "effective rank"},
           "optimiser step", "effective rank (RankMe; collapsed ~1-2)"),
    Figure("lowshot", "Low-shot linear probe: accuracy vs labels per class", "reports/plots/lowshot.csv", "k",
           {"encoder": "I-JEPA encoder", "random_init": "random-init ViT", "raw_pixels": "raw pixels"},
           "labelled images per class (k)", "test top-1 (mean over seeds)", log_x=True),
    Figure("accuracy_vs_step", "Linear probe accuracy vs pretraining step", "reports/plots/accuracy_vs_step.csv",
           "step", {"linear_test_top1": "test", "linear_val_top1": "val"}, "pretraining step",
           "linear-probe top-1 (snapshot subset)"),
)  # fmt: skip


def read_rows(root: Path, figure: Figure) -> list[dict[str, float]]:
    """The figure's x and series columns as floats, one dict per row; non-finite values dropped."""
    path = root / figure.source
    if not path.is_file():
        raise FigureError(f"{figure.source}: not found (figure '{figure.name}'; run the upstream stages first)")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t" if path.suffix == ".tsv" else ",")
        wanted = [figure.x, *figure.series]
        missing = [c for c in wanted if c not in (reader.fieldnames or [])]
        if missing:
            raise FigureError(f"{figure.source}: no column(s) {missing} (figure '{figure.name}' plots "
                              f"{wanted}; found {reader.fieldnames})")  # fmt: skip
        rows = []
        for n, raw in enumerate(reader, start=2):
            try:
                row = {c: float(raw[c]) for c in wanted if raw[c] not in ("", None)}
            except ValueError as exc:
                raise FigureError(f"{figure.source}:{n}: not a number: {exc}") from exc
            rows.append({c: v for c, v in row.items() if math.isfinite(v)})
    if not rows:
        raise FigureError(f"{figure.source}: no data rows (figure '{figure.name}')")
    return rows


def vega_lite_spec(figure: Figure, rows: Sequence[dict[str, float]]) -> dict[str, Any]:
    """A Vega-Lite line chart of the rows, one coloured line per series (long format: x, series, value)."""
    values = [
        {"x": row[figure.x], "series": label, "value": row[col]}
        for row in rows
        if figure.x in row
        for col, label in figure.series.items()
        if col in row
    ]
    x_scale = {"type": "log", "nice": False} if figure.log_x else {"zero": False}
    color: dict[str, Any] = {"field": "series", "type": "nominal", "title": None,
                             "sort": list(figure.series.values())}  # fmt: skip
    if len(figure.series) == 1:
        color["legend"] = None
    return {
        "$schema": VEGA_LITE_SCHEMA,
        "title": figure.title,
        "width": 460,
        "height": 260,
        "background": "white",
        "data": {"values": values},
        "mark": {"type": "line", "point": len(values) <= 60 * len(figure.series)},
        "encoding": {
            "x": {"field": "x", "type": "quantitative", "title": figure.x_label, "scale": x_scale},
            "y": {"field": "value", "type": "quantitative", "title": figure.y_label, "scale": {"zero": False}},
            "color": color,
        },
    }


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    # pipeline/atomic.py has no binary variant, and it is a dep of every stage: adding one there would
    # invalidate the whole pipeline
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def render_png(spec: dict[str, Any], scale: float = 1.5, colors: int = 64) -> bytes:
    """PNG bytes of a Vega-Lite spec (vl-convert; offline), quantised to a `colors` palette: ~10 KB
    instead of ~80 KB for a line chart, with no visible loss (the PNGs are committed)."""
    import vl_convert
    from PIL import Image

    image = Image.open(io.BytesIO(vl_convert.vegalite_to_png(spec, scale=scale))).convert("RGB")
    buf = io.BytesIO()
    image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def render_figures(root: Path | str = ".", out_dir: Path | str = FIGURES_DIR) -> list[Path]:
    """Render every figure into `out_dir` (relative to `root`), each file atomically; stale PNGs of
    figures no longer defined are removed. Returns the written paths in FIGURES order."""
    root = Path(root)
    out = root / out_dir
    specs = [(fig, vega_lite_spec(fig, read_rows(root, fig))) for fig in FIGURES]  # all inputs checked first
    written = []
    for fig, spec in specs:
        path = out / fig.file
        _write_bytes_atomic(path, render_png(spec))
        written.append(path)
    known = {fig.file for fig in FIGURES}
    for stale in out.glob("*.png"):
        if stale.name not in known:
            stale.unlink()
    return written


def existing_figures(root: Path | str = ".", out_dir: Path | str = FIGURES_DIR) -> list[tuple[Figure, Path]]:
    """(figure, path relative to `root`) of the rendered, non-empty PNGs, in FIGURES order."""
    root = Path(root)
    found = []
    for fig in FIGURES:
        rel = Path(out_dir) / fig.file
        if (root / rel).is_file() and (root / rel).stat().st_size > 0:
            found.append((fig, rel))
    return found


def card_figures(root: Path | str = ".", card_dir: Path | str = "registry") -> list[tuple[str, str]]:
    """(title, link relative to the model card's directory) of every rendered figure."""
    return [(fig.title, rel.relative_to(card_dir).as_posix()) for fig, rel in existing_figures(root)]
