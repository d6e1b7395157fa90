"""DVC stage `report`: the headline metrics and the figures of the model card.

Reads reports/{validation,pretrain,eval_linear,eval_lowshot}.json, the dvclive curves
(reports/dvclive/plots/metrics/), reports/plots/*.csv and the gate's thresholds in params `register`.
Writes reports/headline.json (the only DVC `metrics` file: pipeline/headline.py) and
registry/figures/*.png (pipeline/figures.py), each atomically. A missing or malformed input exits 1
naming the file, before anything is written.
"""

from __future__ import annotations

import sys

from pipeline.atomic import write_json_atomic
from pipeline.config import ParamsError, RegisterParams, load_section
from pipeline.figures import FigureError, render_figures
from pipeline.headline import HEADLINE, HeadlineInputError, headline_from_reports


def main(params_path: str = "params.yaml") -> int:
    try:
        params = load_section("register", params_path, RegisterParams)
        head = headline_from_reports(".", params)
        figures = render_figures(".")
    except (ParamsError, HeadlineInputError, FigureError) as exc:
        print(f"report: error: {exc}", file=sys.stderr)
        return 1
    write_json_atomic(HEADLINE, head)
    enc = head["encoder"]
    summary = ", ".join(f"{k} {v:g}" for k, v in enc.items())
    print(f"report: encoder {summary}; gate {'passed' if head['gate']['passed'] else 'FAILED'} -> {HEADLINE}; "
          f"{len(figures)} figures -> {figures[0].parent if figures else '-'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
