"""The :class:`~vitkit.adapters.protocol.HostAdapter` for timm's ``SwinTransformer`` (see :mod:`.timm_swin`).

Stages are timm's ``layers.{s}`` (patch merging first, then the blocks); blocks are named
``layers.{s}.blocks.{j}`` and indexed in forward order over all stages. The forward split (``embed`` / ``pool``
/ ``head``) is timm's; between stages :func:`~.protocol.run_forward` runs each stage's patch merging
(``Stage.downsample``) before its first block. Blocks take and return the token grid ``[B, H, W, C]``.

What a Swin refuses, by name (:func:`~.timm_swin.refuse`): token reduction (tome, evit, pitome, hiprune,
random_drop), early exit and prompt tokens — windowed attention runs on a fixed token grid.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import Mlp
from timm.models.swin_transformer import SwinTransformer

from ..errors import UnsupportedModelError
from ..patching import mixin_class
from . import timm_swin, timm_swin_layers, timm_swin_surgery
from .protocol import AttentionCore, KeyRole, LinearRole, NormLinear, Stage, register_adapter

_TOKEN_METHODS = "token reduction (tome, evit, pitome, hiprune, random_drop) and early exit"


class TimmSwinAdapter:
    """timm Swin Transformer (v1): stages of windowed (W-MSA / SW-MSA) pre-norm blocks, patch merging between."""

    name = "timm SwinTransformer"

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, SwinTransformer)

    def describe(self, model: nn.Module) -> timm_swin.SwinInfo:
        return timm_swin.describe(model)

    def stages(self, model: nn.Module) -> list[Stage]:
        info = timm_swin.describe(model)
        out, i = [], 0
        for s, stage in enumerate(model.layers):
            n = len(stage.blocks)
            window = info.block_windows[i] if n else None
            down = f"layers.{s}.downsample" if not isinstance(stage.downsample, nn.Identity) else None
            out.append(Stage(f"layers.{s}", info.block_names[i : i + n], info.stage_grids[s], window, down))
            i += n
        return out

    def blocks(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(name, blk) for name, blk, _ in timm_swin.stage_blocks(model)]

    def block_parts(self, block: nn.Module, *, index: int | None = None):
        return timm_swin.block_parts(block, index=index)

    def norm_linear_pairs(self, model: nn.Module) -> list[NormLinear]:
        return timm_swin_layers.norm_linear_pairs(model)

    def linear_roles(self, model: nn.Module) -> dict[str, LinearRole]:
        return timm_swin_layers.linear_roles(model)

    def attention_cores(self, model: nn.Module) -> list[AttentionCore]:
        return timm_swin_layers.attention_cores(model)

    def outer_layers(self, model: nn.Module):
        return timm_swin_layers.outer_layers(model)

    def block_layers(self, block: nn.Module, *, index: int | None = None):
        return timm_swin_layers.block_layers(block, index=index)

    def heads(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [("head.fc", model.head.fc)]

    def key_roles(self, state_dict) -> dict[str, KeyRole]:
        return timm_swin_layers.key_roles(state_dict)

    def permutation_axes(self, roles):
        return timm_swin_layers.permutation_axes(roles)

    def set_mlp_widths(self, model: nn.Module, widths) -> None:
        timm_swin_surgery.set_mlp_widths(model, widths)

    def input_size(self, model: nn.Module) -> tuple[int, int, int]:
        return timm_swin.input_size(model)

    def block_input_shape(self, model: nn.Module, index: int) -> tuple[int, ...]:
        blk = timm_swin.stage_blocks(model)[index][1]
        return (*(int(g) for g in blk.input_resolution), int(blk.dim))

    def embed(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return timm_swin_layers.embed(model, x)

    def pool(self, model: nn.Module, tokens: torch.Tensor, *, size: torch.Tensor | None = None) -> torch.Tensor:
        return timm_swin_layers.pool(model, tokens, size=size)

    def head(self, model: nn.Module, features: torch.Tensor) -> torch.Tensor:
        return timm_swin_layers.head(model, features)

    def block_state(self, model: nn.Module, x: torch.Tensor, positions: torch.Tensor | None = None) -> dict:
        return {}  # relative-position bias and shift mask live inside the blocks: they take only the tokens

    def token_positions(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        raise timm_swin.refuse(model, _TOKEN_METHODS, "merged, dropped or exited on")

    def route_linears(self, model: nn.Module, names) -> None:
        return None  # every Linear is called as a module

    def token_grid(self, model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
        raise timm_swin.refuse(model, _TOKEN_METHODS, "merged, dropped or exited on")

    def prefix_tokens(self, model: nn.Module) -> int:
        raise timm_swin.refuse(model, _TOKEN_METHODS, "merged, dropped or exited on")

    def final_norm(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        return timm_swin_layers.final_norm(model, tokens)

    def feature_norm(self, model: nn.Module) -> nn.Module | None:
        return timm_swin_layers.feature_norm(model)

    def attention_residual(self, block, x, *, bias=None, is_causal=False, needs=frozenset()):
        return timm_swin_layers.attention_residual(block, x, bias=bias, is_causal=is_causal, needs=needs)

    def mlp_residual(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return timm_swin_layers.mlp_residual(block, x)

    def block_linears(self, block: nn.Module, *, index: int | None = None) -> dict[str, nn.Module | None]:
        return timm_swin.block_linears(block, index=index)

    def residual_branches(self, block: nn.Module, *, index: int | None = None) -> tuple[nn.Module, nn.Module]:
        return timm_swin_layers.residual_branches(block, index=index)

    def check_prunable(self, model: nn.Module, groups) -> None:
        timm_swin_surgery.check_prunable(model, groups)

    def prune_heads(self, block: nn.Module, keep, *, index: int | None = None) -> None:
        timm_swin_surgery.prune_heads(block, keep, index=index)

    def prune_mlp(self, block: nn.Module, keep, *, index: int | None = None) -> None:
        timm_swin_surgery.prune_mlp(block, keep, index=index)

    def keep_blocks(self, model: nn.Module, keep) -> None:
        timm_swin_surgery.keep_blocks(model, keep)

    def check_prompt_tokens(self, model: nn.Module) -> None:
        timm_swin.describe(model)
        raise timm_swin.refuse(model, "prompt tokens (VPT)", "inserted")

    def add_prompt_tokens(self, model: nn.Module, shallow, deep=(), *, dropout: float = 0.0) -> list[str]:
        raise timm_swin.refuse(model, "prompt tokens (VPT)", "inserted")

    # -- parallel MLP branches (AdaptFormer) ----------------------------------------------------------------------
    def _mlp(self, model: nn.Module, block_name: str) -> nn.Module:
        blocks = dict(self.blocks(model))
        if block_name not in blocks:
            raise ValueError(f"{block_name!r} is not a block of this model; blocks are {list(blocks)}")
        return timm_swin.block_parts(blocks[block_name], where=block_name).mlp

    def mlp_branch_dim(self, model: nn.Module, block_name: str) -> int:
        timm_swin.describe(model)
        mlp = self._mlp(model, block_name)
        if type(mlp) is not Mlp:
            raise UnsupportedModelError(
                f"{block_name}.mlp is a {type(mlp).__name__}; a parallel MLP branch (AdaptFormer) needs timm's Mlp"
            )
        return int(mlp.fc1.in_features)

    def add_mlp_branch(self, model: nn.Module, block_name: str, mixin: type, modules: dict, **attrs) -> str:
        self.mlp_branch_dim(model, block_name)
        mlp = self._mlp(model, block_name)
        dev, dt = mlp.fc1.weight.device, mlp.fc1.weight.dtype
        mlp.__class__ = mixin_class(mixin, type(mlp), mixin.__name__, module=__name__)
        for name, module in modules.items():
            setattr(mlp, name, module.to(dev, dt))
        for name, value in attrs.items():
            setattr(mlp, name, value)
        return f"{block_name}.mlp"


TIMM_SWIN = register_adapter(TimmSwinAdapter())
