"""The :class:`~vitkit.adapters.protocol.HostAdapter` for timm's plain ``VisionTransformer`` family."""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from ..data.core import INPUT_SIZE_READERS
from . import (
    timm_vit,
    timm_vit_adapt,
    timm_vit_forward,
    timm_vit_keys,
    timm_vit_layers,
    timm_vit_prompts,
    timm_vit_stem,
    timm_vit_surgery,
)
from .protocol import AttentionCore, KeyRole, LinearRole, NormLinear, Stage, register_adapter


class TimmViTAdapter:
    """timm ViT / DeiT / distilled DeiT / DeiT3 / register and avg-pool variants, GLU MLPs, a conv stem (ViTamin): one
    stage, global attention."""

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

    def attention_cores(self, model: nn.Module) -> list[AttentionCore]:
        return timm_vit_layers.attention_cores(model)

    def outer_layers(self, model: nn.Module) -> timm_vit_layers.OuterLayers:
        return timm_vit_layers.outer_layers(model)

    def block_layers(self, block: nn.Module, *, index: int | None = None) -> timm_vit_layers.BlockLayers:
        return timm_vit_layers.block_layers(block, index=index)

    def heads(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        names = ("head", "head_dist")
        return [(n, h) for n, h in zip(names, timm_vit.classifier_heads(model), strict=False)]

    def key_roles(self, state_dict: dict[str, torch.Tensor]) -> dict[str, KeyRole]:
        return timm_vit_keys.key_roles(state_dict)

    def permutation_axes(self, roles):
        return timm_vit_keys.permutation_axes(roles)

    def set_mlp_widths(self, model: nn.Module, widths) -> None:
        timm_vit_keys.set_mlp_widths(model, widths)

    def input_size(self, model: nn.Module) -> tuple[int, int, int]:
        return timm_vit.input_size(model)

    def block_input_shape(self, model: nn.Module, index: int) -> tuple[int, ...]:
        info = timm_vit.describe(model)
        return (info.num_tokens, info.embed_dim)

    def embed(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return timm_vit_forward.embed(model, x)

    def block_state(self, model: nn.Module, x: torch.Tensor, positions: torch.Tensor | None = None) -> dict:
        return {}  # absolute position embeddings only: blocks take nothing but the tokens

    def token_positions(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        return None

    def pool(self, model: nn.Module, tokens: torch.Tensor, *, size: torch.Tensor | None = None) -> torch.Tensor:
        return timm_vit_forward.pool(model, tokens, size=size)

    def head(self, model: nn.Module, features: torch.Tensor) -> torch.Tensor:
        return timm_vit_forward.head(model, features)

    def token_grid(self, model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
        return timm_vit_forward.token_grid(model, x)

    def prefix_tokens(self, model: nn.Module) -> int:
        return timm_vit_forward.prefix_tokens(model)

    def final_norm(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        return timm_vit_forward.final_norm(model, tokens)

    def feature_norm(self, model: nn.Module) -> nn.Module | None:
        return timm_vit.feature_norm(model)

    def attention_residual(
        self,
        block: nn.Module,
        x: torch.Tensor,
        *,
        bias: torch.Tensor | None = None,
        is_causal: bool = False,
        needs: frozenset[str] = frozenset(),
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return timm_vit_forward.attention_residual(block, x, bias=bias, is_causal=is_causal, needs=needs)

    def mlp_residual(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return timm_vit_forward.mlp_residual(block, x)

    def block_linears(self, block: nn.Module, *, index: int | None = None) -> dict[str, nn.Module | None]:
        return timm_vit.block_linears(block, index=index)

    def residual_branches(self, block: nn.Module, *, index: int | None = None) -> tuple[nn.Module, nn.Module]:
        return timm_vit.residual_branches(block, index=index)

    def route_linears(self, model: nn.Module, names) -> None:
        return None  # every Linear is called as a module

    def check_prunable(self, model: nn.Module, groups) -> None:
        timm_vit_surgery.check_prunable(model, groups)

    def prune_heads(self, block: nn.Module, keep, *, index: int | None = None) -> None:
        timm_vit_surgery.prune_heads(block, keep, index=index)

    def prune_mlp(self, block: nn.Module, keep, *, index: int | None = None) -> None:
        timm_vit_surgery.prune_mlp(block, keep, index=index)

    def keep_blocks(self, model: nn.Module, keep) -> None:
        timm_vit_surgery.keep_blocks(model, keep)

    def check_prompt_tokens(self, model: nn.Module) -> None:
        timm_vit_prompts.check_prompt_tokens(model)

    def add_prompt_tokens(self, model: nn.Module, shallow: torch.Tensor, deep=(), *, dropout: float = 0.0) -> list[str]:
        return timm_vit_prompts.add_prompt_tokens(model, shallow, deep, dropout=dropout)

    def mlp_branch_dim(self, model: nn.Module, block_name: str) -> int:
        return timm_vit_adapt.mlp_branch_dim(model, block_name)

    def add_mlp_branch(self, model: nn.Module, block_name: str, mixin: type, modules: dict, **attrs) -> str:
        return timm_vit_adapt.add_mlp_branch(model, block_name, mixin, modules, **attrs)


TIMM_VIT = register_adapter(TimmViTAdapter())


def _patch_embed_input_size(model: nn.Module) -> tuple[int, int, int] | None:
    """(C, H, W) from a timm model's patch embedding (any family that has one), None without one: the geometry
    :func:`vitkit.data.input_spec` prefers to the model's data config."""
    pe = getattr(model, "patch_embed", None)
    if pe is None or getattr(pe, "img_size", None) is None:
        return None
    if timm_vit_stem.has_conv_stem(model):  # HybridEmbed: ``proj`` may be Identity, the first conv has the channels
        return timm_vit_stem.in_chans(model), int(pe.img_size[0]), int(pe.img_size[1])
    return int(pe.proj.in_channels), int(pe.img_size[0]), int(pe.img_size[1])


INPUT_SIZE_READERS.append(_patch_embed_input_size)
