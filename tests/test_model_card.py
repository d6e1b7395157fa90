"""The model card's figures and loading snippets (pipeline/registry/card.py), on a minimal entry."""

from __future__ import annotations

from pipeline.registry.card import model_card

KW = {"img_size": 28, "patch_size": 4, "in_chans": 1, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 4.0}


def entry(**kw: object) -> dict:
    return {
        "artifact": "ijepa-encoder",
        "encoder": {"path": "models/encoder.safetensors", "meta_path": "models/encoder.json", "size": 1, "sha256": "a"},
        "architecture": {"timm_kwargs": {**KW, **kw}},
    }


def test_card_embeds_the_figures_in_order_and_shows_both_loaders() -> None:
    figures = [("Pretraining loss", "figures/loss.png"), ("Low-shot", "figures/lowshot.png")]
    card = model_card(entry(), figures)
    assert card.index("## Figures") < card.index("## Intended use")
    assert card.index("![Pretraining loss](figures/loss.png)") < card.index("![Low-shot](figures/lowshot.png)")
    assert "timm.create_model(" in card and 'IJepaModel.from_pretrained("hf-encoder/")' in card
    assert "ijepa export --format transformers" in card
    assert "## Figures" not in model_card(entry())  # nothing rendered: no empty section


def test_card_says_why_a_patch_norm_encoder_has_no_transformers_snippet() -> None:
    card = model_card(entry(embed_norm_layer="layernorm"))
    assert "IJepaModel.from_pretrained" not in card and "LayerNorm after the patch projection" in card


def test_card_schedule_names_the_vicreg_terms_only_when_they_are_on() -> None:
    on = model_card({**entry(), "params": {"train": {"loss": "smooth_l1", "var_weight": 0.05, "cov_weight": 0.05}}})
    assert "loss smooth_l1 + VICReg variance 0.05 / covariance 0.05 on the pooled context features" in on
    off = model_card({**entry(), "params": {"train": {"loss": "smooth_l1", "var_weight": 0.0, "cov_weight": 0}}})
    assert "loss smooth_l1, final loss" in off and "VICReg" not in off
