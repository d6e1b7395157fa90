"""The implementations bench/train_step.py measures, each one training step written as a generator that
yields the name of every part it has just finished, so the same code is timed, FLOP-counted and
profiled (bench/train_step_measure.py).

`OursRunner`: pipeline.ijepa as pipeline/ijepa/train.py runs it on CPU (explicit attention, fused AdamW,
foreach EMA, autocast around the forward only), eager or `torch.compile`d like `train.compile: true`.
`OriginalRunner`: the modules of facebookresearch/ijepa (`src/models/vision_transformer.py`, its
`apply_masks`, `repeat_interleave_batch` and `init_opt`), imported unmodified at run time from a
checkout outside this project, fed the same weights, images and mask indices; only the calling side
(its train_step's order of operations, fp32: its CPU path has no bf16) is written here.
"""

from __future__ import annotations

import copy
import importlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import MaskParams, ModelParams, TrainParams, load_section
from pipeline.ijepa.masks import MultiBlockMaskCollator
from pipeline.ijepa.model import IJEPA
from pipeline.ijepa.objective import jepa_loss, masked_mean, variance_covariance
from pipeline.ijepa.precision import autocast

PARTS = ("masks", "target_fwd", "context_fwd", "predictor_loss", "backward", "optimizer", "ema")
FORWARD = ("target_fwd", "context_fwd", "predictor_loss")  # a compiled step has one "forward" part instead
ORIGINAL_URL = "https://github.com/facebookresearch/ijepa"
ORIGINAL_COMMIT = "52c1ae95d05f743e000e8f10a1f3a79b10cff048"  # the commit this bench was checked against
ORIGINAL_HOWTO = (
    f"git clone {ORIGINAL_URL} /tmp/ijepa-original (checked at {ORIGINAL_COMMIT[:7]}), then pass "
    "--original-src /tmp/ijepa-original or set IJEPA_ORIGINAL_SRC=/tmp/ijepa-original"
)
VIT_TINY = dict(img_size=64, patch_size=8, in_chans=3, embed_dim=192, depth=12, num_heads=3,
                pred_embed_dim=96, pred_depth=6, pred_num_heads=3)  # fmt: skip
EMA = 0.996


@dataclass(frozen=True)
class Variant:
    """One row of the benchmark: what runs, in which precision, mask fill and allocator process."""

    config: str
    impl: str  # "ours" | "original"
    precision: str = "fp32"
    mode: str = "per_target"  # model.predictor_mode (ours)
    fill: str = "pad"  # mask.context_fill: the masks both implementations get
    compiled: bool = False
    malloc: str = "tuned"  # the worker process: glibc defaults, or after tune_cpu_allocator()

    @property
    def key(self) -> str:
        return "/".join(str(v) for v in (self.config, self.impl, self.precision, self.mode, self.fill,
                                         self.compiled, self.malloc))  # fmt: skip

    @property
    def label(self) -> str:
        if self.impl == "original":
            what = f"original fp32 (our {self.fill} masks)"
        else:
            what = f"ours {self.precision} {self.mode}/{self.fill}" + (" compiled" if self.compiled else "")
        return f"{what}, {self.malloc} malloc"


@dataclass
class Setup:
    """The sections a configuration runs with (params.yaml, architecture overridden for vit-tiny)."""

    name: str
    model: ModelParams
    mask: MaskParams
    train: TrainParams
    batch: int

    def images(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        p = self.model
        return torch.rand(self.batch, p.in_chans, p.img_size, p.img_size, generator=g)

    def seeded_model(self, mode: str = "per_target") -> IJEPA:
        """The seed-0 IJEPA every variant of this configuration starts from (mode changes no weight)."""
        torch.manual_seed(0)
        return IJEPA(ModelParams(**{**self.model.model_dump(), "predictor_mode": mode}))

    def collator(self, fill: str) -> MultiBlockMaskCollator:
        mask = MaskParams(**{**self.mask.model_dump(), "context_fill": fill})
        return MultiBlockMaskCollator(self.model.grid, mask, seed=0)


def load_setup(name: str, params: Path, batch: int | None) -> Setup:
    """`default`: params.yaml's model/mask/train sections; `vit-tiny`: the same with the ViT-tiny 64²
    architecture (patch 8, 192x12, predictor 96x6) and batch 32. `batch` overrides the batch size."""
    model, mask, train = (load_section(s, params) for s in ("model", "mask", "train"))
    if name == "vit-tiny":
        model = ModelParams(**{**model.model_dump(), **VIT_TINY})
        default_batch = 32
    elif name == "default":
        default_batch = train.batch_size
    else:
        raise ValueError(f"unknown config {name!r}: expected 'default' or 'vit-tiny'")
    return Setup(name, model, mask, train, batch or default_batch)


class OursRunner:
    """pipeline.ijepa's training step (no schedule or augmentation: they are the same for every row)."""

    def __init__(self, setup: Setup, v: Variant) -> None:
        self.batch, self.train, self.precision = setup.batch, setup.train, v.precision
        self.images = setup.images()
        self.model = setup.seeded_model(v.mode)
        self.model.use_fused_attention(False)  # as pipeline.ijepa.train.build on CPU
        groups = self.model.param_groups(setup.train.weight_decay[0])
        self.opt = torch.optim.AdamW(groups, lr=setup.train.lr, fused=True)
        self.collator = setup.collator(v.fill)
        self.compiled = torch.compile(self.model) if v.compiled else None
        self.device = torch.device("cpu")
        self.masks = None

    def _loss(self, pred: torch.Tensor, target: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        tp, loss = self.train, jepa_loss(pred, target, self.train.loss)
        if tp.var_weight > 0 or tp.cov_weight > 0:  # as IJEPA.forward
            var, cov = variance_covariance(masked_mean(z, self.masks.context_valid))
            loss = loss + tp.var_weight * var + tp.cov_weight * cov
        return loss

    def parts(self, step: int) -> Iterator[str]:
        m, tp, x = self.model, self.train, self.images
        self.masks = masks = self.collator.sample(self.batch, step)
        yield "masks"
        with autocast(self.device, self.precision):
            if self.compiled is not None:
                loss, _ = self.compiled(x, masks, loss=tp.loss, stats=False, var_weight=tp.var_weight,
                                        cov_weight=tp.cov_weight, target_norm=tp.target_norm)  # fmt: skip
                yield "forward"
            else:
                _, target = m.target_representations(x, masks, tp.target_norm)
                yield "target_fwd"
                z = m.encode_context(x, masks)
                yield "context_fwd"
                loss = self._loss(m.predict(x, masks, z), target, z)
                yield "predictor_loss"
        loss.backward()
        yield "backward"
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        yield "optimizer"
        m.ema_update(EMA)
        yield "ema"


def import_original(src: Path) -> dict[str, ModuleType]:
    """The original's modules from a checkout (the folder holding `src/`, or `src/` itself)."""
    src = Path(src).expanduser().resolve()
    root = src.parent if src.name == "src" else src
    if not (root / "src" / "models" / "vision_transformer.py").is_file():
        raise FileNotFoundError(
            f"original I-JEPA source {src}: no src/models/vision_transformer.py there (a checkout of "
            f"{ORIGINAL_URL} is expected). {ORIGINAL_HOWTO}"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    names = ("models.vision_transformer", "masks.utils", "utils.tensors", "helper")
    mods = {n: importlib.import_module(f"src.{n}") for n in names}
    for n, mod in mods.items():
        if not Path(mod.__file__).resolve().is_relative_to(root):
            raise ImportError(f"src.{n} was imported from {mod.__file__}, not from {root}: another `src` "
                              "package shadows the original checkout")  # fmt: skip
    return mods


class OriginalRunner:
    """facebookresearch/ijepa's modules on the same weights (loaded strictly from our seed-0 model: the
    parameter names are the same), images and mask indices. Its train_step: target forward + layer
    norm + apply_masks, encoder on the context, predictor, smooth-L1, backward, its init_opt's AdamW
    (PyTorch's default, a per-tensor loop on CPU), zero_grad, per-tensor EMA. Its LR/WD schedulers,
    grad logging and AllReduce are left out, as our rows leave out the schedule."""

    def __init__(self, setup: Setup, v: Variant, src: Path) -> None:
        mods = import_original(src)
        vit, helper = mods["models.vision_transformer"], mods["helper"]
        self.apply_masks = mods["masks.utils"].apply_masks
        self.repeat_interleave_batch = mods["utils.tensors"].repeat_interleave_batch
        p, self.batch = setup.model, setup.batch
        if p.patch_norm:
            raise ValueError("model.patch_norm: true has no counterpart in the original's VisionTransformer")
        norm = partial(nn.LayerNorm, eps=1e-6)  # what its vit_* and vit_predictor presets pass
        self.encoder = vit.VisionTransformer(
            img_size=[p.img_size], patch_size=p.patch_size, in_chans=p.in_chans, embed_dim=p.embed_dim,
            depth=p.depth, num_heads=p.num_heads, mlp_ratio=p.mlp_ratio, qkv_bias=True, norm_layer=norm,
        )  # fmt: skip
        self.predictor = vit.VisionTransformerPredictor(
            num_patches=self.encoder.patch_embed.num_patches, embed_dim=p.embed_dim,
            predictor_embed_dim=p.pred_embed_dim, depth=p.pred_depth, num_heads=p.pred_num_heads,
            mlp_ratio=p.mlp_ratio, qkv_bias=True, norm_layer=norm,
        )  # fmt: skip
        ours = setup.seeded_model()
        self.encoder.load_state_dict(ours.context_encoder.state_dict(), strict=True)
        self.predictor.load_state_dict(ours.predictor.state_dict(), strict=True)
        self.target = copy.deepcopy(self.encoder)
        for q in self.target.parameters():
            q.requires_grad = False
        tp = setup.train
        self.opt = helper.init_opt(self.encoder, self.predictor, iterations_per_epoch=100, start_lr=tp.start_lr,
                                   ref_lr=tp.lr, warmup=tp.warmup_epochs, num_epochs=tp.epochs,
                                   wd=tp.weight_decay[0], final_wd=tp.weight_decay[1])[0]  # fmt: skip
        self.images = setup.images()
        self.collator = setup.collator(v.fill)
        self.masks = None

    def targets(self, x: torch.Tensor, masks_pred: list[torch.Tensor], n_enc: int) -> torch.Tensor:
        with torch.no_grad():
            h = self.target(x)
            h = F.layer_norm(h, (h.size(-1),))
            return self.repeat_interleave_batch(self.apply_masks(h, masks_pred), len(h), repeat=n_enc)

    def parts(self, step: int) -> Iterator[str]:
        x = self.images
        self.masks = masks = self.collator.sample(self.batch, step)
        masks_enc, masks_pred = [masks.context], list(masks.targets.unbind(1))  # its list-of-[B, N] format
        yield "masks"
        h = self.targets(x, masks_pred, len(masks_enc))
        yield "target_fwd"
        z = self.encoder(x, masks_enc)
        yield "context_fwd"
        loss = F.smooth_l1_loss(self.predictor(z, masks_enc, masks_pred), h)
        yield "predictor_loss"
        loss.backward()
        yield "backward"
        self.opt.step()
        self.opt.zero_grad()
        yield "optimizer"
        with torch.no_grad():
            for q, k in zip(self.encoder.parameters(), self.target.parameters(), strict=True):
                k.mul_(EMA).add_((1.0 - EMA) * q)
        yield "ema"


def max_loss_difference(setup: Setup, original: OriginalRunner) -> float:
    """|loss ours - loss original| on the same seed-0 weights and trimmed masks (no padding, which the
    original cannot mask), predictor per_target: the same math, so ~1e-7. Call before any step."""
    ours = setup.seeded_model("per_target")
    masks = setup.collator("trim").sample(setup.batch, 10_000)
    x = setup.images()
    with torch.no_grad():
        a = jepa_loss(ours.predict(x, masks), ours.target_representations(x, masks)[1])
        enc, pred = [masks.context], list(masks.targets.unbind(1))
        h = original.targets(x, pred, 1)
        b = F.smooth_l1_loss(original.predictor(original.encoder(x, enc), enc, pred), h)
    return float((a - b).abs())
