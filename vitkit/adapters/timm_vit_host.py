"""The :class:`~vitkit.adapters.protocol.HostAdapter` for timm's plain ``VisionTransformer`` family."""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from . import timm_vit, timm_vit_forward, timm_vit_keys, timm_vit_layers
from .protocol import KeyRole, LinearRole, NormLinear, Stage, register_adapter


class TimmViTAdapter:
    """timm ViT / DeiT / distilled DeiT / DeiT3 / register and avg-pool variants: one stage, global attention."""

    name = "timm VisionTransformer"

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, VisionTransformer)

    def describe(self, model: nn.Module) -> timm_vit.ViTInfo:
        return timm_vit.describe(model)

    def stages(self, model: nn.Module) -> list[Stage]:
        info = timm_vit.describe(model)
        return [Stage("blocks", info.block_names, info.grid_size)]

    def blocks(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(f"blocks.{i}", blk) for i, blk in enumerate(model.blocks)]

    def block_parts(self, block: nn.Module, *, index: int | None = None) -> timm_vit.BlockParts:
        return timm_vit.block_parts(block, index=index)

    def norm_linear_pairs(self, model: nn.Module) -> list[NormLinear]:
        return timm_vit_layers.norm_linear_pairs(model)

    def linear_roles(self, model: nn.Module) -> dict[str, LinearRole]:
        return timm_vit_layers.linear_roles(model)

    def heads(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        names = ("head", "head_dist")
        return [(n, h) for n, h in zip(names, timm_vit.classifier_heads(model), strict=False)]

    def key_roles(self, state_dict: dict[str, torch.Tensor]) -> dict[str, KeyRole]:
        return timm_vit_keys.key_roles(state_dict)

    def input_size(self, model: nn.Module) -> tuple[int, int, int]:
        return timm_vit.input_size(model)

    def embed(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return timm_vit_forward.embed(model, x)

    def pool(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        return timm_vit_forward.pool(model, tokens)

    def head(self, model: nn.Module, features: torch.Tensor) -> torch.Tensor:
        return timm_vit_forward.head(model, features)


TIMM_VIT = register_adapter(TimmViTAdapter())
