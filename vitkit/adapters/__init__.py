"""Host-model knowledge lives here and only here."""

from .timm_vit import BlockParts, ViTInfo, block_parts, describe

__all__ = ["BlockParts", "ViTInfo", "block_parts", "describe"]
