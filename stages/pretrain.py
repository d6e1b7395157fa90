"""DVC stage `pretrain`: train shards + reports/validation.json → I-JEPA target encoder.

Reads params `model`, `mask`, `train`. Writes models/encoder.safetensors + models/encoder.json,
models/snapshots/ (+ index.json), models/checkpoints/ (full state, `persist: true`),
reports/pretrain.json and reports/dvclive/ (metric curves), all byte-identical for the same inputs, and
reports/timings/pretrain.json (wall time, images/s, data wait, peak memory, resumes; not a DVC output).

Resume: rerun the stage (`dvc repro pretrain`) after a crash or kill; it continues from the newest
checkpoint in models/checkpoints/ (bit-exact on CPU). A checkpoint of an *unfinished* run under other
params is refused (delete models/checkpoints/ or set train.resume=false); one of a *finished* run
under other params is replaced by a new run. A checkpoint whose bytes no longer match its digest is
refused, naming it (the run stops; move it away to resume from the previous one).

Input gate: refuses to train when reports/validation.json says `success: false`, when a train shard's
sha256 differs from reports/shard.json or the shards hold another sample count than validation saw
(pipeline/data/integrity.py). Divergence guard: a non-finite loss, or one above `train.divergence_factor`
x the first logged loss, stops the run before anything of the diverged model is saved. Every such
failure, and a full disk, is one `pretrain: error:` line and exit 1.
Scale out: `torchrun --nproc_per_node=N -m stages.pretrain` (DDP; gloo on CPU, nccl on GPU; only rank 0 writes).
"""

from __future__ import annotations

import sys

from pipeline.atomic import NoSpaceError
from pipeline.config import MaskParams, ModelParams, ParamsError, TrainParams, load_section
from pipeline.ijepa.checkpoint import CheckpointError
from pipeline.ijepa.guard import DivergenceError
from pipeline.ijepa.train import pretrain


def main(params_path: str = "params.yaml") -> int:
    try:
        model_p = load_section("model", params_path, ModelParams)
        mask_p = load_section("mask", params_path, MaskParams)
        train_p = load_section("train", params_path, TrainParams)
        report = pretrain(model_p, mask_p, train_p, tune_allocator=True)
    except (ParamsError, CheckpointError, DivergenceError, NoSpaceError, FileNotFoundError, KeyError,
            ValueError) as exc:  # fmt: skip
        print(f"pretrain: error: {exc}", file=sys.stderr)
        return 1
    if report is not None:
        print(
            f"pretrain: {report['steps']} steps ({report['epochs']} epochs) on {report['device']} "
            f"x{report['world_size']}, final loss {report['final_loss']:.4f}, "
            f"{report['images_per_s']:.0f} images/s, {report['wall_s']:.0f} s, "
            f"data wait {100 * report['data_wait_fraction']:.1f} %"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
