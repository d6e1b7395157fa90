"""The catalogue of data checks: one named expectation per fact, with its severity and bounds.

Each `Check` names a great-expectations expectation class (by name, so this module does not import
GX), the frame of `validation_facts.Facts` it runs on, its keyword arguments and a human sentence.
Check names are stable (they key `reports/validation.json` and the `validate.severity` param):

- manifest: `manifest_columns`, `manifest_not_null.<column>`, `manifest_key_unique`, `label_range`,
  `sha256_format`, `split_names`, `shard_in_split_dir`, `image_mode`;
- samples (re-read from the tars): `sample_in_manifest` (stray), `sample_in_shards` (missing),
  `sample_key_unique`, `sample_members`, `sample_decodes`, `sample_sha256`, `sample_size`,
  `sample_mode`, `sample_label`, `sample_shard`, `sample_meta`, `no_split_leakage`, `image_mode_uniform`;
- shards: `shard_present` (missing), `shard_known` (stray), `shard_readable`, `shard_count`;
- per split `<s>` of `validate.expected_sizes` (null: train/val/test, sizes from the manifest):
  `split_nonempty.<s>`, `split_size.<s>`,
  `class_balance.<s>`, `duplicate_rate.<s>`, `pixel_mean.<s>`, `pixel_std.<s>`, `constant_fraction.<s>`.

`validate.severity` maps a full name (`pixel_mean.val`) or a prefix (`pixel_mean`) to `error`
(fails the stage, the default) or `warning` (reported only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import ParamsError, ValidateParams
from pipeline.data.shards import MANIFEST_COLUMNS

IMAGE_MODES = ["L", "RGB"]


@dataclass(frozen=True)
class Check:
    """One expectation: `kind` is a `great_expectations.expectations` class name."""

    name: str
    frame: str
    kind: str
    kwargs: dict[str, Any]
    expected: str
    doc: str
    split: str | None = None  # row condition `split == <split>` (per-split checks)
    index: tuple[str, ...] = ()  # extra columns shown beside the id of each unexpected row
    severity: str = "error"

    @property
    def prefix(self) -> str:
        return self.name.split(".", 1)[0]


@dataclass
class _Catalogue:
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, frame: str, kind: str, expected: str, doc: str, **kwargs: Any) -> None:
        split, index = kwargs.pop("split", None), tuple(kwargs.pop("index", ()))
        self.checks.append(Check(name, frame, kind, kwargs, expected, doc, split, index))

    def flag(self, name: str, frame: str, column: str, doc: str, index: tuple[str, ...] = ()) -> None:
        """A boolean fact column that must be True wherever it applies (nulls = not applicable)."""
        self.add(name, frame, "ExpectColumnValuesToBeInSet", "0 unexpected", doc, column=column, value_set=[True],
                 index=index)  # fmt: skip


def _manifest_checks(cat: _Catalogue, splits: list[str], num_classes: int) -> None:
    cat.add("manifest_columns", "manifest", "ExpectTableColumnsToMatchSet", f"contains {', '.join(MANIFEST_COLUMNS)}",
            "the manifest has every required column", column_set=MANIFEST_COLUMNS, exact_match=False)  # fmt: skip
    for col in MANIFEST_COLUMNS:
        cat.add(f"manifest_not_null.{col}", "manifest", "ExpectColumnValuesToNotBeNull", "0 unexpected",
                f"no empty `{col}` cell in the manifest", column=col)  # fmt: skip
    cat.add("manifest_key_unique", "manifest", "ExpectColumnValuesToBeUnique", "0 unexpected",
            "sample keys are unique in the manifest", column="key")  # fmt: skip
    cat.add("label_range", "manifest", "ExpectColumnValuesToBeInSet", f"0 unexpected (labels in 0..{num_classes - 1})",
            f"every label is an integer in [0, {num_classes})", column="label",
            value_set=[str(i) for i in range(num_classes)], index=("label",))  # fmt: skip
    cat.add("sha256_format", "manifest", "ExpectColumnValuesToMatchRegex", "0 unexpected (64 lowercase hex)",
            "every sha256 is 64 lowercase hex digits", column="sha256", regex=r"^[0-9a-f]{64}$",
            index=("sha256",))  # fmt: skip
    cat.add("split_names", "manifest", "ExpectColumnValuesToBeInSet", f"0 unexpected (in {', '.join(splits)})",
            "every row belongs to a known split", column="split", value_set=splits, index=("split",))  # fmt: skip
    cat.add("shard_in_split_dir", "manifest", "ExpectColumnPairValuesToBeEqual", "0 unexpected",
            "each row's shard lies in its split's directory", column_A="split", column_B="shard_split",
            ignore_row_if="either_value_is_missing", index=("split", "shard"))  # fmt: skip
    cat.add("image_mode", "manifest", "ExpectColumnValuesToBeInSet", f"0 unexpected (in {', '.join(IMAGE_MODES)})",
            "every image mode is L or RGB", column="mode", value_set=IMAGE_MODES, index=("mode",))  # fmt: skip


def _sample_checks(cat: _Catalogue) -> None:
    cat.flag("sample_in_manifest", "samples", "in_manifest", "every sample in the tars is listed in the manifest",
             ("tar_shard",))  # fmt: skip
    cat.flag("sample_in_shards", "samples", "in_shards", "every manifest row is found in the tars",
             ("manifest_shard",))  # fmt: skip
    cat.add("sample_key_unique", "samples", "ExpectColumnValuesToBeUnique", "0 unexpected",
            "no sample key occurs twice in the tars", column="tar_key", index=("tar_shard",))  # fmt: skip
    cat.flag("sample_members", "samples", "members_complete",
             "every sample has an image (.png or .jpg), .cls and .json members")  # fmt: skip
    cat.flag("sample_decodes", "samples", "decodes", "every sample decodes as an image", ("decode_error",))
    cat.flag("sample_sha256", "samples", "sha256_matches", "each sample's image sha256 equals the manifest's")
    cat.flag("sample_size", "samples", "size_matches", "each decoded image's width/height equal the manifest's",
             ("tar_width", "tar_height"))  # fmt: skip
    cat.flag("sample_mode", "samples", "mode_matches", "each decoded image's mode equals the manifest's", ("tar_mode",))
    cat.flag("sample_label", "samples", "label_matches", "each sample's .cls label equals the manifest's", ("cls",))
    cat.flag("sample_shard", "samples", "shard_matches", "each sample sits in the shard the manifest names",
             ("tar_shard",))  # fmt: skip
    cat.flag("sample_meta", "samples", "meta_matches", "each sample's .json agrees with its image hash and label")
    cat.flag("no_split_leakage", "samples", "no_leakage", "no image (decoded pixels) appears in two splits",
             ("split", "pixel_hash"))  # fmt: skip
    cat.add("image_mode_uniform", "samples", "ExpectColumnUniqueValueCountToBeBetween", "1",
            "all images share one mode (one channel count)", column="tar_mode", min_value=1, max_value=1)  # fmt: skip


def _shard_checks(cat: _Catalogue) -> None:
    cat.flag("shard_present", "shards", "on_disk", "every shard named in the manifest exists on disk")
    cat.flag("shard_known", "shards", "in_manifest", "every tar on disk is named in the manifest (no stray shard)")
    cat.flag("shard_readable", "shards", "readable", "every tar on disk reads to its end", ("error",))
    cat.add("shard_count", "shards", "ExpectColumnPairValuesToBeEqual", "0 unexpected",
            "each tar holds as many samples as the manifest lists for it", column_A="tar_count",
            column_B="manifest_count", ignore_row_if="either_value_is_missing",
            index=("tar_count", "manifest_count"))  # fmt: skip


def _bounds(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"in [{lo:g}, {hi:g}]"
    return f">= {lo:g}" if lo is not None else f"<= {hi:g}"


def _split_checks(cat: _Catalogue, p: ValidateParams, sizes: dict[str, int]) -> None:
    tolerance = p.size_tolerance if p.expected_sizes is not None else 0.0  # manifest sizes: exact
    for s, size in sizes.items():
        lo, hi = math.floor(size * (1 - tolerance)), math.ceil(size * (1 + tolerance))
        per_split: list[tuple[str, str, float | None, float | None, str]] = [
            ("split_nonempty", "count", 1, None, f"the {s} split holds at least one sample"),
            ("split_size", "count", lo, hi, f"the {s} split holds {size} samples (± {tolerance:.0%}"
             + (")" if p.expected_sizes is not None else ", as the manifest lists)")),
            ("class_balance", "class_min_ratio", p.min_class_ratio, None,
             f"no {s} class has fewer than {p.min_class_ratio:g} × the mean class count"),
            ("duplicate_rate", "duplicate_rate", None, p.max_duplicate_rate,
             f"fraction of {s} images that duplicate another {s} image"),
            ("pixel_mean", "pixel_mean", *p.pixel_mean_range, f"mean pixel value of the {s} split (in [0, 1])"),
            ("pixel_std", "pixel_std", *p.pixel_std_range, f"pixel standard deviation of the {s} split"),
            ("constant_fraction", "constant_fraction", None, p.max_constant_fraction,
             f"fraction of {s} images whose pixels are all equal"),
        ]  # fmt: skip
        for prefix, column, low, high, doc in per_split:
            cat.add(f"{prefix}.{s}", "splits", "ExpectColumnMinToBeBetween", _bounds(low, high), doc, column=column,
                    min_value=low, max_value=high, split=s)  # fmt: skip


def build_checks(params: ValidateParams, num_classes: int, sizes: dict[str, int] | None = None) -> list[Check]:
    """Every check for these params, with severities applied (unknown severity keys raise). `sizes`:
    the split sizes to check (default `params.expected_sizes`; required when that is null)."""
    sizes = sizes if sizes is not None else params.expected_sizes
    if sizes is None:
        raise ValueError("validate.expected_sizes is null: pass the manifest's split sizes")
    cat = _Catalogue()
    splits = list(sizes)
    _manifest_checks(cat, splits, num_classes)
    _sample_checks(cat)
    _shard_checks(cat)
    _split_checks(cat, params, sizes)
    names = {c.name for c in cat.checks} | {c.prefix for c in cat.checks}
    unknown = sorted(set(params.severity) - names)
    if unknown:
        known = sorted({c.prefix for c in cat.checks})
        raise ParamsError(f"validate.severity names unknown checks {unknown}; known checks: {', '.join(known)}")
    return [
        Check(**{**c.__dict__, "severity": params.severity.get(c.name, params.severity.get(c.prefix, "error"))})
        for c in cat.checks
    ]
