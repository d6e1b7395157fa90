"""The model card (`registry/model_card.md`) rendered from a registry entry.

What the model is, how it was trained, the results next to both baselines, the figures of the curves
(registry/figures/*.png, rendered by the `report` stage), intended use and limits, and how to load the
weights with plain timm, with transformers (`ijepa export --format transformers`) and with
`pipeline.load_encoder`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

BASELINES = (("random", "random-init ViT"), ("raw", "raw pixels"))


def _pct(value: Any) -> str:
    return f"{100 * float(value):.2f} %" if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


def _natural(key: str) -> list:
    """Sort key that orders embedded numbers numerically (k5 before k20)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _num(value: Any) -> str:
    return f"{float(value):.2f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


COLLAPSE_ROWS = (
    ("effective rank of the pooled features (of the width; RankMe)", "collapse.effective_rank", _num),
    ("share of feature energy common to every image", "collapse.common_share", _pct),
)


def _results_table(linear: dict, lowshot: dict) -> list[str]:
    rows: list[tuple[str, str, dict]] = [
        ("linear probe, test top-1", "linear.test_top1", linear),
        ("linear probe, val top-1", "linear.val_top1", linear),
        ("linear probe, test top-5", "linear.test_top5", linear),
    ]
    rows += [
        (f"weighted kNN k={m.group(1)}, test top-1", k, linear)
        for k in sorted(linear, key=_natural)
        if (m := re.fullmatch(r"knn\.k(\d+)\.test_top1", k))
    ]
    lowshot_keys = [k for k in lowshot if re.fullmatch(r"lowshot\.(k\d+|pct[\d_]+)\.mean", k)]
    for key in sorted(lowshot_keys, key=_natural):
        setting = key.split(".")[1]
        pct = setting[3:].replace("_", ".")
        label = f"{setting[1:]} labels/class" if setting.startswith("k") else f"{pct} % labels"
        rows.append((f"low-shot ({label}), test top-1 mean", key, lowshot))
    lines = [
        "| metric | I-JEPA encoder | " + " | ".join(b for _, b in BASELINES) + " |",
        "|---|---|" + "---|" * len(BASELINES),
    ]
    for label, key, report in rows:
        if key not in report:
            continue
        std_key = key[: -len(".mean")] + ".std" if key.endswith(".mean") else None
        cell = _pct(report[key]) + (f" ± {_pct(report[std_key])}" if std_key and std_key in report else "")
        base = [_pct(report.get(f"baseline.{name}.{key}")) for name, _ in BASELINES]
        lines.append(f"| {label} | {cell} | " + " | ".join(base) + " |")
    for label, key, fmt in COLLAPSE_ROWS:
        if key in linear:
            base = [fmt(linear.get(f"baseline.{name}.{key}")) for name, _ in BASELINES]
            lines.append(f"| {label} | {fmt(linear[key])} | " + " | ".join(base) + " |")
    return lines


def _gate_lines(gate: dict) -> list[str]:
    verdict = "passed" if gate.get("passed") else "FAILED (recorded because register.enforce_gate is false)"
    lines = [f"Quality gate: **{verdict}**.", ""]
    for c in gate.get("checks", []):
        obs = c["observed"]
        obs_s = "missing" if obs is None else (str(obs).lower() if isinstance(obs, bool) else f"{obs:.4f}")
        req = c["required"]
        req_s = str(req).lower() if isinstance(req, bool) else f">= {req:.4f}"
        lines.append(f"- {c['name']}: {obs_s} (required {req_s}, `{c['param']}`) {'✓' if c['passed'] else '✗'}")
    return lines


def _figure_lines(figures: Sequence[tuple[str, str]]) -> list[str]:
    if not figures:
        return []
    lines = ["## Figures", "", "Rendered offline by the `report` stage from the run's own curves "
             "(`dvc plots show` draws the same charts).", ""]  # fmt: skip
    for title, link in figures:
        lines += [f"![{title}]({link})", ""]
    return lines


def _transformers_lines(enc: dict[str, Any], kw: dict[str, Any]) -> list[str]:
    if kw.get("embed_norm_layer"):
        return [
            "Not as a transformers `IJepaModel`: this encoder has a LayerNorm after the patch projection "
            "(`model.patch_norm`), which IJepaModel cannot represent (`ijepa export` refuses it).",
            "",
        ]
    return [
        "With Hugging Face transformers (`IJepaModel`; same features as timm within fp32 rounding):",
        "",
        "```python",
        f"# once: ijepa export --format transformers hf-encoder/ --encoder {enc['path']}",
        "from transformers import IJepaModel",
        'model = IJepaModel.from_pretrained("hf-encoder/").eval()  # local directory, nothing downloaded',
        "features = model(pixel_values=x).last_hidden_state.mean(dim=1)  # x normalised as above -> (B, width)",
        "```",
        "",
    ]


def _regulariser(train: dict[str, Any]) -> str:
    """The VICReg terms added to the I-JEPA loss, when they are on (a deviation from the paper)."""
    var, cov = train.get("var_weight") or 0, train.get("cov_weight") or 0
    if not var and not cov:
        return ""
    return (f" + VICReg variance {var:g} / covariance {cov:g} on the pooled context features of the global "
            "batch (a deviation from I-JEPA that prevents dimensional collapse)")  # fmt: skip


def model_card(entry: dict[str, Any], figures: Sequence[tuple[str, str]] = ()) -> str:
    """Markdown model card for one registry entry; `figures`: (title, link relative to the card)."""
    arch = entry.get("architecture") or {}
    kw = arch.get("timm_kwargs", {})
    params = entry.get("params") or {}
    train, mask, data = params.get("train") or {}, params.get("mask") or {}, params.get("data") or {}
    metrics = entry.get("metrics") or {}
    linear, lowshot, pretrain = (
        metrics.get("eval_linear") or {},
        metrics.get("eval_lowshot") or {},
        metrics.get("pretrain") or {},
    )
    enc, src, dat = entry["encoder"], entry.get("source") or {}, entry.get("data") or {}
    norm = arch.get("normalization", {})
    name = entry["artifact"]
    lines = [
        f"# Model card: `{name}`",
        "",
        "## What it is",
        "",
        f"A Vision Transformer encoder pretrained with I-JEPA (Assran et al. 2023) on `{src.get('name', '?')}`: "
        "the EMA **target** encoder, no class token, fixed 2-D sin-cos position embeddings, average-pooled "
        "patch tokens as the image representation. It is a frozen feature extractor; it has no classifier head.",
        "",
        f"- architecture: ViT, image {kw.get('img_size')} px, patch {kw.get('patch_size')}, "
        f"{kw.get('in_chans')} channel(s), width {kw.get('embed_dim')}, depth {kw.get('depth')}, "
        f"{kw.get('num_heads')} heads, MLP ratio {kw.get('mlp_ratio')} (`timm_kwargs` in `{enc['meta_path']}`)",
        f"- weights: `{enc['path']}`, {enc['size']} bytes, sha256 `{enc['sha256']}`",
        f"- input: pixels in [0, 1], then `(x - mean) / std` with mean {norm.get('mean')} and std {norm.get('std')}",
        "- version, stages and registration date: `ijepa registry show` (gto tags); when and from which commit "
        "this entry was built: `reports/timings/register.json`",
        "",
        "## How it was trained",
        "",
        f"- data: {src.get('name', '?')} from `{src.get('root', '?')}` (source digest `{src.get('digest', 'n/a')}`), "
        f"split counts {dat.get('count')}, {len((dat.get('shards') or {}).get('sha256') or {})} WebDataset shards, "
        f"manifest sha256 `{(dat.get('manifest') or {}).get('sha256')}`",
        f"- schedule: {pretrain.get('steps', '?')} steps ({pretrain.get('epochs', '?')} epochs), batch "
        f"{train.get('batch_size')}, lr {train.get('lr')} (warmup from {train.get('start_lr')}, cosine to "
        f"{train.get('final_lr')}), weight decay {train.get('weight_decay')}, EMA {train.get('ema')}, "
        f"loss {train.get('loss')}{_regulariser(train)}, final loss {pretrain.get('final_loss', '?')}",
        f"- masking: {mask.get('num_targets')} target blocks, scale {mask.get('target_scale')}, aspect "
        f"{mask.get('target_aspect')}; context scale {mask.get('context_scale')}",
        f"- hardware: {pretrain.get('device', '?')} x{pretrain.get('world_size', 1)}, precision "
        f"{pretrain.get('precision', '?')} (training time and speed: `reports/timings/pretrain.json`)",
        f"- data params: seed {data.get('seed')}, val size {data.get('val_size')}, max per class "
        f"{data.get('max_per_class')}; every parameter is in `registry/entry.json` (`params`)",
        "",
        "## Results",
        "",
        "Frozen target encoder, average-pooled last-layer tokens; test split reported; the baselines get "
        "exactly the same protocols. Linear probe: logistic regression on standardised features, C chosen on "
        "the validation split. kNN: cosine similarity of features centred with the train mean, exp(sim/0.07) "
        "votes. Low-shot: k labelled train images per class (mean ± std over seeds), C chosen by "
        "cross-validation **inside those k labels** (k = 1: the strongest regularisation of the grid), so a "
        "k-shot number uses only k labels per class. Collapse: effective rank and common-energy share of "
        "the pooled train features (a collapsed encoder has rank ~1-2).",
        "",
        *_results_table(linear, lowshot),
        "",
        *_gate_lines(entry.get("gate") or {}),
        "",
        *_figure_lines(figures),
        "## Intended use and limits",
        "",
        "- Intended: frozen features for linear / low-shot classification of images like the training data "
        f"({kw.get('img_size')}×{kw.get('img_size')}, {kw.get('in_chans')} channel(s)), and as a reference "
        "model for the pipeline's tests, benchmarks and audits.",
        "- Not intended: images from other domains or sizes without re-evaluation; any decision about people. "
        "It is a small model trained briefly on a small dataset; compare it against the baselines above "
        "before relying on it (on Fashion-MNIST raw pixels are a strong baseline).",
        "- Accuracies come from one evaluation run; low-shot numbers are a mean ± std over seeds.",
        "",
        "## How to load it",
        "",
        "With plain timm (no project code):",
        "",
        "```python",
        "import json, timm, safetensors.torch",
        f'meta = json.load(open("{enc["meta_path"]}"))',
        'model = timm.create_model("vit_small_patch16_224", pretrained=False, **meta["timm_kwargs"])',
        '# or: timm.models.VisionTransformer(**meta["timm_kwargs"])',
        f'model.load_state_dict(safetensors.torch.load_file("{enc["path"]}"), strict=True)',
        "model.eval()",
        "features = model(x)  # x: (B, C, H, W), normalised as above -> (B, width), mean-pooled tokens",
        "```",
        "",
        *_transformers_lines(enc, kw),
        "With the pipeline (a path, a registry version or a stage):",
        "",
        "```python",
        "import pipeline",
        f'model = pipeline.load_encoder("{enc["path"]}")   # or "v0.1.0", or "prod"',
        "```",
        "",
        f"From the registry: `ijepa registry get --stage prod` prints the path of the verified weights; "
        f"`dvc artifacts get . {name} --rev v0.1.0` downloads them with DVC alone. "
        "`ijepa lineage --verify` audits the chain from this model back to the source files.",
        "",
    ]
    return "\n".join(lines)
