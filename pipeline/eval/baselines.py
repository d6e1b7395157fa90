"""The baselines every evaluation report carries, and the encoder-minus-baseline deltas.

Owns which cached feature sets are compared (`SETS`: the pretrained encoder, the random-init encoder
of the same architecture built by `pipeline.ijepa.export.random_encoder(meta, eval.random_init_seed)`,
and raw pixels: the normalised image flattened), running one protocol on all of them, and the flat
`baseline.<name>.<key>` / `delta.<name>.<key>` entries (see `pipeline.eval.report` for the scheme).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

from pipeline.eval.features import FeatureSet, load_features

ENCODER = "encoder"
BASELINES: dict[str, str] = {"raw": "raw_pixels", "random": "random_init"}  # report name -> cached set
SETS: tuple[str, ...] = (ENCODER, *BASELINES.values())

# Keys that get a delta: accuracies, not spreads, sizes or chosen hyper-parameters.
DELTA_KEY = re.compile(r"^(linear\.(val|test)_top[15]|knn\.k\d+\.test_top1|lowshot\.[a-z0-9_]+\.mean)$")
# Encoder-only detail not repeated for the baselines.
ENCODER_ONLY = re.compile(r"\.class\d+\.|\.fit_split$")

Metrics = dict[str, float | int | str]


def evaluate_sets(
    features_root: Path | str, protocol: Callable[[dict[str, FeatureSet]], Metrics]
) -> dict[str, Metrics]:
    """Run `protocol({split: FeatureSet})` on the encoder and on every baseline set; {set: metrics}."""
    return {name: protocol(load_features(features_root, name)) for name in SETS}


def compare(by_set: Mapping[str, Metrics]) -> Metrics:
    """Encoder metrics as they are, each baseline's under `baseline.<name>.`, and for every accuracy
    key (`DELTA_KEY`) the encoder minus the baseline under `delta.<name>.`."""
    encoder = by_set[ENCODER]
    out: Metrics = dict(encoder)
    for short, set_name in BASELINES.items():
        base = by_set[set_name]
        out.update({f"baseline.{short}.{k}": v for k, v in base.items() if not ENCODER_ONLY.search(k)})
    for short, set_name in BASELINES.items():
        base = by_set[set_name]
        for key, value in encoder.items():
            if DELTA_KEY.match(key) and key in base:
                out[f"delta.{short}.{key}"] = round(float(value) - float(base[key]), 4)
    return out
