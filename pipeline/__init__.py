"""The I-JEPA pipeline library (see ../shared/DESIGN.md). Importing it is cheap: heavy modules load lazily.

`pipeline.load_encoder(path_or_version)` returns the encoder as a timm VisionTransformer from a file
(`models/encoder.safetensors` with its `.json` beside it, or a directory holding both), a registry
version (`"v0.1.0"`, `"ijepa-encoder@v0.1.0"`) or a stage (`"prod"`, `"ijepa-encoder#prod"`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

__all__ = ["load_encoder"]


def load_encoder(path_or_version: str | Path, repo: str | Path = ".") -> VisionTransformer:
    """timm VisionTransformer (eval mode) from an encoder file/directory, or a registry version or stage of
    the project in `repo` (materialised from DVC at the gto tag into .ijepa/registry-cache/, sha256-verified)."""
    from pipeline.ijepa import export

    if Path(path_or_version).exists():
        return export.load_encoder(path_or_version)
    from pipeline.registry.versions import load_registered

    return load_registered(str(path_or_version), repo=repo)
