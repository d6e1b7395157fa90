"""Multi-node pretraining: two torchrun "nodes" on this machine (c10d rendezvous on 127.0.0.1, gloo)
read disjoint shards and train the encoder of one process with the same global batch and seed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline.config import TrainParams
from pipeline.data.loader import list_shards, part_shards, train_loader
from pipeline.data.parts import rank_parts, resolve_parts
from pipeline.ijepa.checkpoint import list_checkpoints
from pipeline.ijepa.train import RunPaths, pretrain
from tests.prefect_server import free_port
from tests.test_train import MASK, MODEL, TRAIN, make_root, stage_env, write_params

NODE_BATCH = 8
SETTINGS = {**TRAIN, "epochs": 1, "checkpoint_every": 1000, "snapshots": 0, "lr": 2e-3, "start_lr": 2e-3,
            "precision": "fp32", "ema": (0.5, 0.5),
            "var_weight": 0.5, "cov_weight": 0.5}  # fmt: skip
# VICReg's variance/covariance are statistics of the global batch (gathered across ranks), so with them
# on (weights 10x the default, to make them count in 6 steps) any split of the batch trains the same model.


def keys(batch: list) -> list[str]:
    return [s[2] for s in batch]


def test_parts_split_the_shards_and_do_not_depend_on_the_reader(tmp_path: Path) -> None:
    root = make_root(tmp_path / "run", n_per_shard=12, shards=4)
    urls = list_shards(root / "data/shards/train")
    assert part_shards(urls, (0, 2)) == urls[0::2] and part_shards(urls, (1, 2)) == urls[1::2]
    with pytest.raises(ValueError, match="data part 4 of 5 gets no shard: only 4 shards"):
        part_shards(urls, (4, 5))
    own = {k: {f"train-{i:07d}" for s in (k, k + 2) for i in range(12 * s, 12 * (s + 1))} for k in (0, 1)}
    seen = {}
    for k in (0, 1):
        loader = train_loader(root / "data/shards/train", 6, seed=3, epoch=0, epoch_batches=4, part=(k, 2),
                              collate_fn=keys)  # fmt: skip
        seen[k] = [key for batch in loader for key in batch]
        assert len(seen[k]) == 24 and set(seen[k]) <= own[k]  # only its own shards
    # what a part yields depends on (seed, epoch, part), not on the process reading it (no rank in the seed)
    again = train_loader(root / "data/shards/train", 6, seed=3, epoch=0, epoch_batches=4, part=(1, 2), collate_fn=keys)
    assert [key for batch in again for key in batch] == seen[1]
    assert resolve_parts(None, 2, 8) == 2 and list(rank_parts(1, 2, 4)) == [2, 3]
    with pytest.raises(ValueError, match=r"train.data_parts=3 is not a multiple of the 2 processes"):
        resolve_parts(3, 2, 8)
    with pytest.raises(ValueError, match=r"train.batch_size=5 cannot be shared by the 2 data parts"):
        resolve_parts(4, 2, 5)


@pytest.mark.slow
def test_two_nodes_train_the_encoder_of_one_process(tmp_path: Path) -> None:
    single, nodes = make_root(tmp_path / "one", 24, 4), make_root(tmp_path / "two", 24, 4)
    plain = make_root(tmp_path / "plain", 24, 4)
    report = pretrain(MODEL, MASK, TrainParams(**{**SETTINGS, "batch_size": 2 * NODE_BATCH, "data_parts": 2}),
                      RunPaths.under(single))  # fmt: skip
    assert report is not None and report["steps"] == 6  # 96 images / global batch 16
    pretrain(MODEL, MASK, TrainParams(**{**SETTINGS, "batch_size": 2 * NODE_BATCH}), RunPaths.under(plain))

    write_params(nodes, **{**SETTINGS, "batch_size": NODE_BATCH})
    port = free_port()
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint",
           f"127.0.0.1:{port}", "--rdzv_id", "ijepa-test", "--local_addr", "127.0.0.1"]  # fmt: skip
    procs = [subprocess.Popen([*cmd, "--node_rank", str(n), "-m", "stages.pretrain"], cwd=nodes, env=stage_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
             for n in (0, 1)]  # fmt: skip
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(o[-3000:] for o in outs)
    text = "\n".join(outs)
    assert "rank 0/2 reads data parts [0] of 2" in text and "rank 1/2 reads data parts [1] of 2" in text

    assert [p.name for p in list_checkpoints(nodes / "models/checkpoints")] == ["ckpt-step0000006.pt"]
    two, one, other = (final_state(r) for r in (nodes, single, plain))
    assert two.keys() == one.keys()
    worst = max((two[k] - one[k]).abs().max().item() for k in one)
    assert worst < 1e-5, f"2-node model differs from the 1-process one by {worst}"
    control = max((other[k] - one[k]).abs().max().item() for k in one)
    assert control > 1e-3  # other data and masks (the plain 1-process loader): a clearly different model


def final_state(root: Path) -> dict[str, torch.Tensor]:
    """Context encoder, predictor and target encoder of the last checkpoint, plus the exported encoder."""
    [last] = list_checkpoints(root / "models/checkpoints")[-1:]
    state = torch.load(last, weights_only=True)["model"]
    exported = load_file(str(root / "models/encoder.safetensors"))
    return {**state, **{f"export.{k}": v for k, v in exported.items()}}
