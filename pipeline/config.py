"""Typed pipeline parameters: one pydantic model per `params.yaml` section.

Every stage reads only its own sections through `load_section`, so a typo in a key fails fast with
the file, the dotted field and the expected type, instead of being silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_PARAMS = Path("params.yaml")


class ParamsError(ValueError):
    """Raised when params.yaml is missing, unreadable or has an invalid value."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Range = tuple[float, float]


class DataParams(_Section):
    """`data`: where images come from and how they are split and sharded."""

    source: Literal["fashion-mnist", "imagefolder"] = "fashion-mnist"
    root: str = "/usr/share/datasets/fashion-mnist"
    seed: int = 0
    val_size: int = Field(5000, ge=0, description="fashion-mnist: images held out of train for val")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="imagefolder: fraction for val")
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="imagefolder: fraction for test")
    max_per_class: int | None = Field(None, ge=1, description="cap images per class and split (quick runs)")
    image_mode: Literal["L", "RGB"] = "L"
    image_size: int | None = Field(None, ge=4, description="imagefolder: output size (keep-ratio: the shorter "
                                   "side); None keeps the source size")  # fmt: skip
    resize: Literal["keep-ratio", "center-crop", "pad", "stretch"] = Field(
        "keep-ratio", description="keep-ratio: shorter side to image_size, aspect kept; the others: a square"
    )
    encoding: Literal["auto", "keep", "jpeg", "png"] = Field(
        "auto", description="stored image format. keep: the source file's bytes when no conversion or resize "
        "is needed (else re-encoded in the source's format); jpeg: JPEG at jpeg_quality; png: lossless; "
        "auto: png for fashion-mnist, keep for imagefolder",
    )  # fmt: skip
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality of re-encoded images")
    deduplicate: bool = Field(False, description="drop exact decoded-pixel duplicates before the split "
                              "(listed in reports/shard.json)")  # fmt: skip
    shard_max_count: int = Field(10000, ge=1)
    shard_max_bytes: int = Field(64_000_000, ge=1024)
    on_corrupt: Literal["fail", "skip"] = "fail"

    @property
    def stored_encoding(self) -> str:
        """`encoding` with `auto` resolved for the source (fashion-mnist: png, imagefolder: keep)."""
        if self.encoding != "auto":
            return self.encoding
        return "png" if self.source == "fashion-mnist" else "keep"

    @model_validator(mode="after")
    def _fractions(self) -> DataParams:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be < 1")
        return self


class ValidateParams(_Section):
    """`validate`: thresholds of the great-expectations gate (check names: pipeline/data/validation_checks.py)."""

    expected_sizes: dict[str, int] | None = Field(
        None,
        description="split -> expected sample count (these splits are checked, e.g. Fashion-MNIST's "
        "{train: 55000, val: 5000, test: 10000}); None: train/val/test with the counts the manifest lists, "
        "i.e. what the shard stage produced",
    )
    size_tolerance: float = Field(0.02, ge=0.0, description="allowed relative deviation from expected_sizes")
    pixel_sample: int | None = Field(100_000, ge=1, description="images per split whose pixels feed the "
                                     "statistics (seeded sample of larger splits); None: all")  # fmt: skip
    pixel_seed: int = Field(0, description="seed of the pixel-statistics sample")
    num_classes: int | None = Field(None, ge=1, description="labels must lie in [0, num_classes); None: distinct "
                                    "class names in the manifest")  # fmt: skip
    min_class_ratio: float = Field(0.5, ge=0.0, le=1.0, description="smallest class >= ratio x mean class count")
    max_duplicate_rate: float = Field(0.01, ge=0.0, le=1.0, description="identical images inside one split")
    pixel_mean_range: Range = (0.05, 0.95)
    pixel_std_range: Range = (0.02, 0.5)
    max_constant_fraction: float = Field(0.01, ge=0.0, le=1.0, description="images with all pixels equal")
    severity: dict[str, Literal["error", "warning"]] = Field(
        default_factory=dict, description="check name or prefix -> error (fails the stage, default) | warning"
    )

    @model_validator(mode="after")
    def _sizes(self) -> ValidateParams:
        sizes = self.expected_sizes
        if sizes is not None and (not sizes or any(v < 0 for v in sizes.values())):
            raise ValueError("expected_sizes must be null or name at least one split, with sizes >= 0")
        return self


class ModelParams(_Section):
    """`model`: encoder and predictor architecture."""

    img_size: int = 28
    patch_size: int = 4
    in_chans: int = 1
    embed_dim: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    patch_norm: bool = Field(False, description="LayerNorm on the patch embedding (timm embed_norm_layer)")
    pos_embed_scale: float = Field(1.0, gt=0.0, description="factor on the fixed sin-cos position embedding")
    pred_embed_dim: int = 64
    pred_depth: int = 3
    pred_num_heads: int = 4
    predictor_mode: Literal["per_target", "shared"] = Field(
        "shared", description="per_target: the original's B*T sequences; shared: one masked sequence per image"
    )

    @model_validator(mode="after")
    def _grid(self) -> ModelParams:
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads or self.pred_embed_dim % self.pred_num_heads:
            raise ValueError("embed dims must be divisible by their head counts")
        return self

    @property
    def grid(self) -> tuple[int, int]:
        side = self.img_size // self.patch_size
        return side, side


class MaskParams(_Section):
    """`mask`: multi-block masking (DESIGN.md §4)."""

    num_targets: int = Field(4, ge=1)
    target_scale: Range = (0.15, 0.2)
    target_aspect: Range = (0.75, 1.5)
    context_scale: Range = (0.85, 1.0)
    context_aspect: Range = (1.0, 1.0)
    min_context: int = Field(16, ge=1, description="floor on an image's context patches (redraw, then fall back)")
    context_fill: Literal["pad", "trim"] = Field(
        "trim", description="equal context lengths in a batch: pad + attention mask, or trim to the shortest"
    )
    official_compat: bool = Field(False, description="reproduce the original code's masking flaws (implies trim)")


class TrainParams(_Section):
    """`train`: optimisation, schedules, checkpointing (pipeline/ijepa/train.py; docs in params.yaml). The
    defaults of every section are the tuned CPU recipe of params.yaml (bench/tuning.md, session 4)."""

    seed: int = 0
    epochs: int = Field(4, ge=1, description="passes over the train split (the run is at least min_steps)")
    min_steps: int | None = Field(
        None, ge=1, description="run at least this many updates, however small the dataset (epochs stretched)"
    )
    batch_size: int = Field(32, ge=1)
    data_parts: int | None = Field(
        None, ge=1, description="parts the training data is cut into (disjoint shard subsets, pipeline/data/parts.py); "
        "every process reads data_parts / processes of them. None: one per process (one process: the plain epoch "
        "loader). Runs with equal data_parts and global batch train the same model on any number of processes",
    )  # fmt: skip
    lr: float = Field(3e-4, gt=0.0, le=1.0, description="peak learning rate (AdamW), after warmup")
    start_lr: float = Field(5e-5, gt=0.0, le=1.0, description="learning rate at step 0 (linear warmup to lr)")
    final_lr: float = Field(1e-6, gt=0.0, le=1.0, description="learning rate at the last step (cosine from lr)")
    warmup_epochs: float = Field(0.25, ge=0.0, description="of `epochs`; scaled with the run when min_steps applies")
    lr_schedule: Literal["cosine", "wsd"] = Field(
        "cosine", description="after warmup: cosine to final_lr, or wsd: constant lr, cosine over the last part"
    )
    lr_decay_fraction: float = Field(0.2, gt=0.0, le=1.0, description="wsd: share of the run spent decaying")
    weight_decay: Range = (0.04, 0.4)
    ema: Range = (0.99, 1.0)
    grad_clip: float | None = Field(None, gt=0.0, description="max gradient norm; None: no clipping")
    divergence_factor: float | None = Field(
        100.0, gt=1.0, description="stop the run when the loss exceeds this many times its first logged value "
        "(a NaN/inf loss always stops it); None: only non-finite losses stop it",
    )  # fmt: skip
    loss: Literal["smooth_l1", "l2"] = "smooth_l1"
    target_norm: Literal["layer", "batch", "whiten"] = Field(
        "layer",
        description="targets: per-token layer norm (original); batch: then standardised per position and dim "
        "across the batch; whiten: then centred per position and whitened across the batch",
    )
    var_weight: float = Field(0.05, ge=0.0, description="VICReg variance hinge on pooled context features (0: off)")
    cov_weight: float = Field(0.05, ge=0.0, description="VICReg covariance penalty on pooled context features (0: off)")
    augment_scale: Range | None = Field(
        None, description="random-resized-crop area range (aspect 3/4-4/3) from the full stored image to "
        "model.img_size, in the loader workers; None: no crop (a resize + centre crop when not model-sized)",
    )  # fmt: skip
    num_workers: int = Field(2, ge=0)
    device: str = "auto"
    compile: bool = False
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="autocast dtype of the forward pass; auto: bf16 on CUDA and on CPUs with native bf16"
    )
    collapse_warn_rank: float | None = Field(
        2.0, ge=0.0, description="warn when the pooled target features' effective rank is below this, after warm-up"
    )
    checkpoint_every: int = Field(200, ge=1, description="steps between checkpoints")
    snapshots: int = Field(4, ge=0, description="intermediate encoder snapshots for accuracy-vs-time")
    log_every: int = Field(20, ge=1)
    resume: bool = Field(True, description="resume from models/checkpoints; false: delete them, start over")

    @model_validator(mode="after")
    def _ranges(self) -> TrainParams:
        if self.start_lr > self.lr or self.final_lr > self.lr:
            lrs = f"start_lr ({self.start_lr:g}) and final_lr ({self.final_lr:g})"
            raise ValueError(f"{lrs} must be <= lr ({self.lr:g})")
        if min(self.weight_decay) < 0:
            raise ValueError(f"weight_decay values must be >= 0, got {list(self.weight_decay)}")
        if not 0.0 <= self.ema[0] <= self.ema[1] <= 1.0:
            raise ValueError(f"ema must satisfy 0 <= start <= end <= 1, got {list(self.ema)}")
        return self


class EvalParams(_Section):
    """`eval`: frozen-encoder protocols and baselines (pipeline/eval; accuracies are fractions in [0, 1])."""

    last_layers: int = Field(1, ge=1, description="1: last layer pool; 4: concat of last 4 layers' pools")
    batch_size: int = Field(512, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on CUDA, fp32 on CPU")
    device: str = "auto"
    max_train: int | None = Field(10000, ge=1, description="train images per feature set (stratified; speed)")
    snapshot_max_images: int | None = Field(1000, ge=1, description="images per split for snapshot probes")
    subset_seed: int = 0
    c_grid: list[float] = Field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6])
    c_patience: int | None = Field(1, ge=1, description="stop the C walk after this many C without val gain")
    lowshot_k: list[int] = Field(default_factory=lambda: [1, 5, 10, 25])
    lowshot_seeds: int = Field(5, ge=1)
    lowshot_percent: float | None = Field(1.0, gt=0.0, le=100.0)
    lowshot_cv_folds: int = Field(5, ge=2, description="C of a low-shot probe: CV folds inside its own subset")
    knn_k: list[int] = Field(default_factory=lambda: [10, 20, 200])
    knn_temperature: float = Field(0.07, gt=0.0)
    knn_center: bool = Field(True, description="subtract the train mean before cosine similarity (DINO-style)")
    random_init_seed: int = 0
    crop_ratio: float = Field(0.875, gt=0.0, le=1.0, description="eval resize + centre crop of images not "
                              "already model-sized: shorter side to img_size / crop_ratio (256 -> 224)")  # fmt: skip
    raw_pixels_size: int | None = Field(32, ge=1, description="raw-pixel baseline: images larger than this are "
                                        "area-averaged to this square first (null: full resolution)")  # fmt: skip


class RegisterParams(_Section):
    """`register`: the quality gate and the artifact's identity (pipeline/registry/gate.py).

    The gate compares `metric` (a key of reports/eval_linear.json, a fraction in [0, 1]) with
    `min_linear_top1`, and the margin of `margin_metric` (a key of eval_linear.json or
    eval_lowshot.json; `None` = `metric`) over each baseline (`baseline.random.<margin_metric>`,
    `baseline.raw.<margin_metric>`) with the minimum margins, and the encoder's
    `collapse.effective_rank` (eval_linear.json) with `min_effective_rank`; a `None` threshold is not
    checked.
    """

    artifact: str = Field("ijepa-encoder", pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
    metric: str = "linear.test_top1"
    margin_metric: str | None = None
    min_linear_top1: float = Field(0.0, ge=0.0, le=1.0)
    min_margin_over_random: float | None = 0.0
    min_margin_over_raw: float | None = None
    min_effective_rank: float | None = Field(
        None, ge=0.0, description="collapse gate: effective rank of the encoder's pooled train features (None: off)"
    )
    require_validation: bool = True
    enforce_gate: bool = Field(True, description="false: a failed gate is recorded (not promotable to prod)")
    source_hash_max_bytes: int = Field(2_000_000_000, ge=0, description="hash the source dataset up to this size")


class StageRunParams(_Section):
    """Per-stage overrides of the flow's retries and timeout."""

    retries: int | None = Field(None, ge=0)
    timeout_s: float | None = Field(None, gt=0)


class FlowParams(_Section):
    """`flow`: the Prefect flow over the DVC stages and its deployments (flows/, docs/ORCHESTRATION.md)."""

    api_url: str | None = Field(None, description="Prefect API for serve/run; None: PREFECT_API_URL or ephemeral")
    cron: str = Field("0 2 * * *", description="nightly-retrain schedule (cron, in `timezone`)")
    timezone: str = "UTC"
    target: str | None = Field(None, description="run stages up to this one; None = all")
    retries: int = Field(0, ge=0, description="task retries per stage (DVC failures are mostly deterministic)")
    retry_delay_s: float = Field(30.0, ge=0.0)
    timeout_s: float = Field(86400.0, gt=0, description="per stage; the stage's process is killed after it")
    stages: dict[str, StageRunParams] = Field(default_factory=dict, description="per-stage retries/timeout_s")
    lock_timeout_s: float = Field(600.0, ge=0.0, description="wait this long for another flow/sweep's lock")
    log_tail_lines: int = Field(20, ge=1, description="stage output lines quoted in a failure message")
    work_pool: str = Field("ijepa", min_length=1, description="work pool of `ijepa flow deploy` (created as a "
                           "`process` pool when missing)")  # fmt: skip


class SpaceParam(_Section):
    """One search dimension of `sweep.space`: float/int (low, high, log, step) or categorical (choices)."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> SpaceParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty `choices` list")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"{self.type} needs `low` <= `high`")
        elif self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("log scale needs low > 0 and no step")
        return self


class PruningParams(_Section):
    """`sweep.pruning`: MedianPruner fed from a dvclive-style TSV while a trial runs."""

    enabled: bool = True
    file: str = Field("reports/dvclive/plots/metrics/loss.tsv", description="TSV (step, metric) the run appends to")
    metric: str = "loss"
    direction: Literal["minimize", "maximize"] = "minimize"
    n_startup_trials: int = Field(2, ge=0, description="finished trials before any pruning")
    n_warmup_steps: int = Field(0, ge=0, description="steps of a trial before it may be pruned")
    poll_s: float = Field(5.0, gt=0)


class SweepParams(_Section):
    """`sweep`: Optuna study whose trials are `dvc exp run --temp -S ...` experiments (flows/sweep.py)."""

    study: str = Field("ijepa", pattern=r"^[A-Za-z0-9_.-]+$")
    storage: str | None = Field(None, description="Optuna RDB URL; None: sqlite:///.optuna/study.db")
    n_trials: int = Field(10, ge=1)
    seed: int = 0
    target: str | None = Field("eval_linear", description="stage each trial runs up to (None: all)")
    objective_file: str = "reports/eval_linear.json"
    objective: str = Field("linear.val_top1", description="validation metric: never select on test")
    direction: Literal["minimize", "maximize"] = "maximize"
    report: list[str] = Field(default_factory=lambda: ["linear.test_top1"], description="recorded as user attrs")
    trial_timeout_s: float = Field(86400.0, gt=0)
    exp_remote: str | None = Field(
        None, description="git remote (name or URL) each finished trial's experiment is pushed to (`dvc exp "
        "push`), so that any worker sharing the study can apply the best one; None: experiments stay local",
    )  # fmt: skip
    pruning: PruningParams = Field(default_factory=PruningParams)
    space: dict[str, SpaceParam] = Field(default_factory=dict)


SECTIONS: dict[str, type[_Section]] = {
    "data": DataParams,
    "validate": ValidateParams,
    "model": ModelParams,
    "mask": MaskParams,
    "train": TrainParams,
    "eval": EvalParams,
    "register": RegisterParams,
    "flow": FlowParams,
    "sweep": SweepParams,
}

S = TypeVar("S", bound=_Section)


def read_params_file(path: Path | str = DEFAULT_PARAMS) -> dict[str, Any]:
    """Read params.yaml as a plain dict, with a clear error when it is missing or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (run from the project root or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return raw


def parse_section(name: str, raw: dict[str, Any] | None, source: str = "params.yaml") -> _Section:
    """Validate one section's dict; errors name the file, the dotted key and what was expected."""
    model = SECTIONS[name]
    try:
        return model.model_validate(raw or {})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in (name, *err["loc"]))
            got = err.get("input")
            lines.append(f"  {loc}: {err['msg']} (got {got!r})")
        raise ParamsError(f"{source}: invalid params:\n" + "\n".join(lines)) from None


def load_section(name: str, path: Path | str = DEFAULT_PARAMS, model: type[S] | None = None) -> S:
    """Load and validate the `name` section of params.yaml (absent section = all defaults)."""
    raw = read_params_file(path)
    return parse_section(name, raw.get(name), str(path))  # type: ignore[return-value]
