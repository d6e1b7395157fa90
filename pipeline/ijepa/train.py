"""I-JEPA pretraining: build the parts, one update (`train_step`), the step loop over a seeded data
stream, checkpoint/resume, snapshots and the final export. Works in one process or under
`torchrun` (DDP: gloo on CPU, nccl on GPU; only rank 0 writes files).

Determinism (what exact resume rests on): model init is seeded by `train.seed`; the masks of update
`s` come from `collator.sample(B, s)`; crops are cut in the loader workers, seeded by (seed, data epoch,
rank or data part, worker); the data is a stream of loader epochs (`rank_loader`) and a checkpoint
records the stream position (data epoch, batches consumed in it), so a resumed run re-creates that
loader and skips the consumed batches (replaying their crops). On CPU a killed and resumed run therefore
ends bit-identical to an uninterrupted one. `epoch` in logs/reports is the logical epoch `step // steps_per_epoch`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from pipeline.atomic import write_json_atomic
from pipeline.config import MaskParams, ModelParams, TrainParams
from pipeline.data.parts import rank_loader, rank_parts, resolve_parts
from pipeline.ijepa import checkpoint as ckpt
from pipeline.ijepa.augment import BatchTransform, train_transform
from pipeline.ijepa.clock import RunClock
from pipeline.ijepa.distributed import Dist, init_distributed, local_masks, resolve_device
from pipeline.ijepa.export import encoder_meta, save_encoder
from pipeline.ijepa.guard import LossGuard
from pipeline.ijepa.layers import tune_cpu_allocator
from pipeline.ijepa.logging import Meter, RunLogger, peak_memory_mb
from pipeline.ijepa.masks import MultiBlockMaskCollator
from pipeline.ijepa.model import IJEPA
from pipeline.ijepa.paths import RunPaths
from pipeline.ijepa.precision import autocast, resolve_precision
from pipeline.ijepa.run_inputs import checked_inputs, run_identity
from pipeline.ijepa.schedules import Schedules, ScheduleValues, run_length


@dataclass
class Progress:
    """Run position and counters beyond model/optimizer state; stored in every checkpoint. Only what the
    params and data determine: the wall-clock side of the run is in `RunClock` (pipeline/ijepa/clock.py)."""

    step: int = 0
    data_epoch: int = 0
    data_batch: int = 0
    images: int = 0
    last_loss: float = float("nan")
    history: list[dict[str, Any]] = field(default_factory=list)
    snapshots: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Trainer:
    """Everything one update needs, built once by `build`."""

    model: IJEPA
    forward: torch.nn.Module
    optimizer: torch.optim.Optimizer
    collator: MultiBlockMaskCollator
    transform: BatchTransform
    schedules: Schedules
    params: TrainParams
    device: torch.device
    dist: Dist
    steps_per_epoch: int


def build(
    model_p: ModelParams,
    mask_p: MaskParams,
    train_p: TrainParams,
    norm: dict,
    n_train: int,
    device: torch.device,
    dist: Dist,
) -> Trainer:
    """Seeded model, AdamW (no wd on biases/norms), mask collator, batch transform and schedules."""
    steps_per_epoch = n_train // (train_p.batch_size * dist.world)
    if steps_per_epoch < 1:
        raise ValueError(
            f"{n_train} training images cannot fill one batch of {train_p.batch_size} "
            f"per process ({dist.world} processes): lower train.batch_size"
        )
    ckpt.seed_all(train_p.seed)
    model = IJEPA(model_p).to(device)
    # same formula; timm's explicit softmax(q k^T) v is ~10 % faster than fused SDPA on CPU (bench/train_step.md)
    model.use_fused_attention(device.type == "cuda")
    # fused: one kernel for all parameters (CPU and CUDA; same update rule as the default foreach path)
    optimizer = torch.optim.AdamW(model.param_groups(train_p.weight_decay[0]), lr=train_p.start_lr, fused=True)
    forward: torch.nn.Module = model
    if dist.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        forward = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if train_p.compile:
        forward = torch.compile(forward)  # type: ignore[assignment]
    resolve_parts(train_p.data_parts, dist.world, train_p.batch_size)  # fail before the model is built
    collator = MultiBlockMaskCollator(model_p.grid, mask_p, seed=train_p.seed)  # global batch: local_masks
    transform = BatchTransform(model_p.img_size, norm["mean"], norm["std"])
    schedules = Schedules.from_params(train_p, steps_per_epoch, run_length(train_p, steps_per_epoch))
    return Trainer(model, forward, optimizer, collator, transform, schedules, train_p, device, dist, steps_per_epoch)


def apply_schedule(tr: Trainer, step: int) -> ScheduleValues:
    values = tr.schedules.at(step)
    for group in tr.optimizer.param_groups:
        group["lr"] = values.lr
        if not group.get("wd_exclude", False):
            group["weight_decay"] = values.wd
    return values


def train_step(
    tr: Trainer, images: torch.Tensor, step: int, with_stats: bool = False
) -> tuple[torch.Tensor, dict[str, float], ScheduleValues]:
    """One optimiser update `step` (0-based): schedule, augment, mask, forward/backward, clip, EMA."""
    values = apply_schedule(tr, step)
    x = tr.transform(images.to(tr.device, non_blocking=True), step)
    masks = local_masks(tr.collator, x.shape[0], step, tr.dist).to(tr.device, non_blocking=True)
    with autocast(tr.device, tr.params.precision):
        loss, stats = tr.forward(
            x,
            masks,
            loss=tr.params.loss,
            stats=with_stats,
            var_weight=tr.params.var_weight,
            cov_weight=tr.params.cov_weight,
            target_norm=tr.params.target_norm,
        )
    tr.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if tr.params.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_([p for g in tr.optimizer.param_groups for p in g["params"]], tr.params.grad_clip)
    tr.optimizer.step()
    tr.model.ema_update(values.momentum)
    return loss.detach(), stats, values


def data_stream(tr: Trainer, shards: Path | str, progress: Progress) -> Iterator[tuple[torch.Tensor, float]]:
    """(images, seconds waited) from loader epochs `progress.data_epoch, +1, …`, starting after the
    `progress.data_batch` batches already consumed; advances `data_epoch` when a loader runs dry."""
    p, rank, world = tr.params, tr.dist.rank, tr.dist.world
    if (n_parts := resolve_parts(p.data_parts, world, p.batch_size)) > 1:
        mine = list(rank_parts(rank, world, n_parts))
        print(f"pretrain: rank {rank}/{world} reads data parts {mine} of {n_parts}", flush=True)
    while True:
        crop = train_transform(tr.transform.size, p.augment_scale)  # per sample, in the workers
        it = iter(rank_loader(shards, p, rank, world, epoch=progress.data_epoch, epoch_batches=tr.steps_per_epoch,
                              transform=crop))  # fmt: skip
        for i in range(progress.data_batch):
            if next(it, None) is None:
                raise RuntimeError(
                    f"data epoch {progress.data_epoch} ended after {i} batches while resuming "
                    f"at batch {progress.data_batch}: the shards changed?"
                )
        produced = progress.data_batch
        while True:
            t0 = time.perf_counter()
            batch = next(it, None)
            if batch is None:
                break
            produced += 1
            yield batch[0], time.perf_counter() - t0
        if produced == 0:
            raise RuntimeError(
                f"rank {tr.dist.rank} got no batch from {shards} (fewer shards than "
                f"processes × workers, or fewer images than one batch)"
            )
        progress.data_epoch, progress.data_batch = progress.data_epoch + 1, 0


def snapshot_steps(total: int, count: int) -> set[int]:
    """`count` evenly spaced intermediate steps in (0, total)."""
    return {s for k in range(1, count + 1) if 0 < (s := round(total * k / (count + 1))) < total}


def checkpoint_state(tr: Trainer, progress: Progress, identity: dict[str, Any]) -> dict[str, Any]:
    values = tr.schedules.at(min(progress.step, tr.schedules.total_steps - 1))
    return {
        "fingerprint": ckpt.fingerprint(identity),
        "identity": identity,
        "step": progress.step,
        "total_steps": tr.schedules.total_steps,
        "steps_per_epoch": tr.steps_per_epoch,
        "epoch": progress.step // tr.steps_per_epoch,
        "schedule": asdict(values),
        "model": tr.model.state_dict(),
        "optimizer": tr.optimizer.state_dict(),
        "progress": asdict(progress),
        "rng": ckpt.rng_state(),
    }


def restore(tr: Trainer, path: Path, state: dict[str, Any]) -> Progress:
    """Load a compatible checkpoint into the trainer; returns its progress."""
    try:
        tr.model.load_state_dict(state["model"])
        tr.optimizer.load_state_dict(state["optimizer"])
        known = {f.name for f in fields(Progress)}  # checkpoints before RunClock also held wall times
        progress = Progress(**{k: v for k, v in state["progress"].items() if k in known})
        ckpt.set_rng_state(state["rng"])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise ckpt.CheckpointError(f"{path}: checkpoint does not fit this model/optimizer: {exc}") from exc
    return progress


def resume_or_start(tr: Trainer, paths: RunPaths, identity: dict[str, Any]) -> Progress:
    """Resume from the newest checkpoint when it belongs to this run; see docs in stages/pretrain.py."""
    directory, found = paths.checkpoints, ckpt.list_checkpoints(paths.checkpoints)
    fresh = not tr.params.resume or not found
    if not fresh:
        state = ckpt.load_checkpoint(found[-1])
        problem = ckpt.incompatibility(found[-1], state, identity)
        if problem is None:
            return restore(tr, found[-1], state)
        if int(state["step"]) < int(state["total_steps"]):
            raise ckpt.CheckpointError(
                f"{problem}\nRefusing to resume an unfinished run under different params. Restore the params, "
                f"or delete {directory}/ or set train.resume=false (`dvc exp run -S train.resume=false`)."
            )
        if tr.dist.is_main:
            print(f"pretrain: the run in {directory} finished under other params; starting a new run")
    tr.dist.barrier()
    if tr.dist.is_main:
        ckpt.clear_directory(directory)
    tr.dist.barrier()
    return Progress()


def save_snapshot(tr: Trainer, paths: RunPaths, progress: Progress, meta: dict[str, Any]) -> None:
    name = f"encoder-step{progress.step:07d}.safetensors"
    epoch = progress.step // tr.steps_per_epoch
    save_encoder(
        tr.model.target_encoder, paths.snapshot_staging / name, {**meta, "step": progress.step, "epoch": epoch}
    )
    progress.snapshots = [s for s in progress.snapshots if s["step"] != progress.step]
    progress.snapshots.append({"file": name, "step": progress.step, "epoch": epoch})


def run_steps(
    tr: Trainer,
    paths: RunPaths,
    progress: Progress,
    identity: dict[str, Any],
    meta: dict[str, Any],
    log: RunLogger,
    clock: RunClock,
    stop_after: int | None = None,
) -> bool:
    """The loop: updates until the run's last step; checkpoints, snapshots and logs on the way.
    `stop_after` ends the attempt early after that many total steps, as a kill would (tests).
    Returns True when the run is complete."""
    p, total, main = tr.params, tr.schedules.total_steps, tr.dist.is_main
    snaps, meter = snapshot_steps(total, p.snapshots), Meter()
    tr.model.train()
    stream = data_stream(tr, paths.shards, progress)
    guard = LossGuard(p.divergence_factor, progress.history, tr.dist.world)  # non-finite/exploding loss: stop
    while progress.step < total:
        if stop_after is not None and progress.step >= stop_after:
            return False
        images, wait = next(stream)
        step = progress.step
        log_now = (step + 1) % p.log_every == 0 or step + 1 == total
        loss, stats, values = train_step(tr, images, step, with_stats=log_now and main)
        guard.watch(loss)
        progress.step, progress.data_batch = step + 1, progress.data_batch + 1
        progress.images += images.shape[0] * tr.dist.world
        meter.update(loss, images.shape[0] * tr.dist.world)
        clock.tick(images.shape[0] * tr.dist.world, wait)
        if log_now:
            row = {"loss": meter.loss()}
            guard.check(progress.step, paths.checkpoints, row["loss"])
            progress.last_loss = row["loss"]
            if main:
                row.update(
                    lr=values.lr,
                    wd=values.wd,
                    momentum=values.momentum,
                    epoch=progress.step / tr.steps_per_epoch,
                    target_std=stats.get("target_std", 0.0),
                    effective_rank=stats.get("target_eff_rank", 0.0),
                    context_len=stats.get("context_len", 0.0),
                    **{k: v for k, v in stats.items() if k.startswith("reg_")},
                )
                log.log(progress.step, row, meter.images_per_s())
                log.warn_low_rank(progress.step, row["effective_rank"], p.collapse_warn_rank, tr.schedules.warmup_steps)
            meter.reset()
        log.advance()
        if progress.step in snaps or progress.step % p.checkpoint_every == 0 or progress.step == total:
            guard.check(progress.step, paths.checkpoints)  # never save a diverged model
        if main and progress.step in snaps:
            save_snapshot(tr, paths, progress, meta)
        if main and (progress.step % p.checkpoint_every == 0 or progress.step == total):
            progress.history = list(log.history)
            ckpt.save_checkpoint(paths.checkpoints, checkpoint_state(tr, progress, identity))
            clock.record(progress.step)  # the wall time up to this checkpoint, for a resumed attempt
    return True


def export(tr: Trainer, paths: RunPaths, progress: Progress, meta: dict[str, Any], clock: RunClock) -> dict[str, Any]:
    """Final target encoder, the snapshot folder + index, reports/pretrain.json and its timings (rank 0);
    returns the report plus the timings."""
    epoch = progress.step // tr.steps_per_epoch
    save_encoder(tr.model.target_encoder, paths.encoder, {**meta, "step": progress.step, "epoch": epoch})
    if paths.snapshots.exists():
        shutil.rmtree(paths.snapshots)
    paths.snapshots.mkdir(parents=True)
    entries = sorted(progress.snapshots, key=lambda s: s["step"])
    for entry in entries:
        for suffix in (".safetensors", ".json"):
            src = (paths.snapshot_staging / entry["file"]).with_suffix(suffix)
            if src.exists():
                shutil.copy2(src, paths.snapshots / src.name)
    write_json_atomic(paths.snapshots / "index.json", entries, sort_keys=True)
    report = {
        "final_loss": progress.last_loss,
        "steps": progress.step,
        "epochs": epoch,
        "steps_per_epoch": tr.steps_per_epoch,
        "images": progress.images,
        "device": str(tr.device),
        "precision": resolve_precision(tr.device, tr.params.precision),
        "world_size": tr.dist.world,
    }
    write_json_atomic(paths.report, report, sort_keys=True)
    timing = clock.record(progress.step, peak_memory_mb=round(peak_memory_mb(tr.device), 1))
    return {**report, **timing}


def pretrain(
    model_p: ModelParams,
    mask_p: MaskParams,
    train_p: TrainParams,
    paths: RunPaths | None = None,
    stop_after: int | None = None,
    tune_allocator: bool = False,
) -> dict[str, Any] | None:
    """The whole stage: returns the report plus its timings, or None when `stop_after` ended the attempt early.
    `tune_allocator`: on CPU, apply `model.tune_cpu_allocator` (process-wide; for a process that
    does one long run, like the stage; many short runs in one process got slower with it)."""
    paths = paths or RunPaths.under()
    dist = init_distributed(train_p.device)
    device = resolve_device(train_p.device, dist)
    if tune_allocator and device.type == "cpu":
        tune_cpu_allocator()
    norm, n_train = checked_inputs(paths.validation, paths.shards, paths.shard_report)  # the stage-level gate
    tr = build(model_p, mask_p, train_p, norm, n_train, device, dist)
    identity = run_identity(model_p, mask_p, train_p, norm, paths.shards, dist.world)
    progress = resume_or_start(tr, paths, identity)
    log = RunLogger(paths.live, tr.schedules.total_steps, progress.step, progress.history, enabled=dist.is_main)
    clock = RunClock.start(paths.timings, progress.step)
    if progress.step:
        log.message(f"pretrain: resuming at step {progress.step}/{tr.schedules.total_steps} from {paths.checkpoints}")
    meta = encoder_meta(model_p, norm)
    try:
        done = run_steps(tr, paths, progress, identity, meta, log, clock, stop_after)
    finally:
        log.close()
    report = export(tr, paths, progress, meta, clock) if done and dist.is_main else None
    dist.barrier()
    dist.close()
    return report if done else None
