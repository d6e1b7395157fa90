"""Fashion-MNIST stays bit-identical: the tensors fed to the model (no crops) and the evaluation batches.

The digests below were computed by tests/pinned_inputs.py against the data path before issue 13
(commit 709f16f: PIL decoding, batch-level transform, whole-shard eval loader). A change of decoder,
arithmetic, batch order or batch boundaries changes them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pinned_inputs import digests, summary

PINNED = {
    "train": "9b016a2e36b20f5601d27555995c298ee1f73620d61bacc1f506081fcd1f179a",
    "eval.train": "32660e490c7598560a29d88784fc48d9017781d0546b2dfd56f0dd0bb7346e63",
    "eval.val": "1d50aa60530ac6d804c97fdbb563219098de34381a31d9dbd018da37f3b25c6d",
    "eval.test": "7af138855e7b955be38f79cb3410b6eddec2de5ed61f1126fa529d699ffb67a9",
    "eval_subset": "762f855de191369d27e9b7e0245e620d4f1d20355e8185cc36c0cf716d1a5e42",
}


def test_model_inputs_and_eval_batches_match_the_pinned_digests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # dvclive looks for a repo from the cwd
    assert summary(digests(tmp_path)) == PINNED
