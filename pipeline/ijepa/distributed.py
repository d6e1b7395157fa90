"""Process topology of pretraining: torchrun/DDP process group, rank info, device choice, and this
process's rows of the global batch's masks.

Under `torchrun --nproc_per_node=N -m stages.pretrain` every process joins one group (nccl when it
trains on CUDA, gloo on CPU); a plain `python -m stages.pretrain` is world size 1 with no group.
Several nodes: one torchrun per node with the same rendezvous, e.g. on each of 2 hosts
`torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST0:29400 --rdzv_id JOB
-m stages.pretrain` (SLURM and more: docs/ORCHESTRATION.md); ranks are global, `LOCAL_RANK` picks the
GPU. Every rank draws the masks of the whole global batch from one seed and keeps its own rows
(`local_masks`), like the data (pipeline/data/parts.py): the run is the run of one process with the
global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
import torch.distributed.nn.functional as dist_fn

from pipeline.ijepa.masks import Masks, MultiBlockMaskCollator


@dataclass(frozen=True)
class Dist:
    """This process's rank, the world size and the local rank (GPU index on its node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch_dist.barrier()

    def close(self) -> None:
        if self.world > 1 and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """The rows of `x` from every rank, in rank order (the global batch), with gradients flowing back
    to each rank's own rows; `x` itself outside a process group. For batch statistics (VICReg's
    variance/covariance) that must not depend on how the global batch is split over processes."""
    if not torch_dist.is_available() or not torch_dist.is_initialized() or torch_dist.get_world_size() == 1:
        return x
    return torch.cat(dist_fn.all_gather(x), dim=0)


def init_distributed(device_name: str) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl with CUDA, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not torch_dist.is_initialized():
        cuda = device_name != "cpu" and torch.cuda.is_available()
        if cuda:  # one GPU per process, before NCCL picks one
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch_dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Dist(torch_dist.get_rank(), torch_dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, dist: Dist) -> torch.device:
    """`auto` → CUDA (this process's local rank) when available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", dist.local_rank)
    return device


def local_masks(collator: MultiBlockMaskCollator, batch_size: int, step: int, dist: Dist) -> Masks:
    """Masks of this rank's `batch_size` images: rows rank·B … (rank+1)·B − 1 of the masks of the
    global batch (B × world), which every rank draws alike from (collator seed, step)."""
    if dist.world == 1:
        return collator.sample(batch_size, step)
    full = collator.sample(batch_size * dist.world, step)
    rows = slice(dist.rank * batch_size, (dist.rank + 1) * batch_size)
    valid = None if full.context_valid is None else full.context_valid[rows]
    raw = full.context_raw_len[rows] if full.context_raw_len.numel() else full.context_raw_len
    return Masks(full.context[rows], full.targets[rows], raw, full.fallbacks, valid)
