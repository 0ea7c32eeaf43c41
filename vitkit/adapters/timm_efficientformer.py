"""Adapter for timm's ``EfficientFormer`` (Li et al., NeurIPS 2022, "EfficientFormer: Vision Transformers at
MobileNet Speed"): a conv stem, PoolFormer-style conv stages (``MetaBlock2d``: ``x + ls1·(avgpool(x) − x)``, then
``x + ls2·convmlp(x)`` with 1×1 convs + BatchNorm) and, at the end of the last stage, pre-norm attention blocks
(``MetaBlock1d``: ``x + ls1·attn(norm1 x)``, ``x + ls2·mlp(norm2 x)``, the paper's MB⁴ᴰ and MB³ᴰ MetaBlocks, §3).

The attention (``Attention``) splits its fused ``qkv`` head-major (per head ``[q | k | v]``, values ``attn_ratio``
times wider than keys) and adds a learned bias per head and token offset (LeViT's attention bias, Graham et al.,
ICCV 2021, eq. 1). That bias is fixed to a 7×7 token grid, so the model takes 224×224 input only. The shared
logic is in :mod:`.timm_hybrid`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn
from timm.layers import DropPath, LayerScale, LayerScale2d, Mlp
from timm.models.efficientformer import Attention as EfficientFormerAttention
from timm.models.efficientformer import (
    ConvMlpWithNorm,
    Downsample,
    EfficientFormer,
    EfficientFormerStage,
    Flat,
    MetaBlock1d,
    MetaBlock2d,
    Pooling,
    Stem4,
)

from ..errors import UnsupportedModelError
from .protocol import arch_name, register_adapter, register_explicit_attention
from .timm_hybrid import BlockLayout, HybridAdapter, HybridInfo, attention_bias, check_modules, stem_grid
from .timm_vit_layers import OuterLayers

#: methods that apply to EfficientFormer (what a refusal points the user to)
EFFICIENTFORMER_METHODS = (
    "ptq, mixed_ptq, precision, prune (heads, mlp, blocks), lora, lora_merge, adapter, merge, finetune, distill"
)

#: every module class an EfficientFormer may contain (vitkit's own patches and quantizers are accepted besides)
_HANDLED = (
    EfficientFormer,
    Stem4,
    EfficientFormerStage,
    Downsample,
    MetaBlock2d,
    Pooling,
    ConvMlpWithNorm,
    LayerScale2d,
    Flat,
    MetaBlock1d,
    EfficientFormerAttention,
    LayerScale,
    Mlp,
    nn.Sequential,
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.AvgPool2d,
    nn.Linear,
    nn.LayerNorm,
    nn.GELU,
    nn.ReLU,
    nn.Identity,
    nn.Dropout,
    DropPath,
)


@register_explicit_attention
class ExplicitEfficientFormerAttention(EfficientFormerAttention):
    """EfficientFormer's ``Attention`` with both matmuls hooked: each matmul input passes :meth:`site` — ``"q"``
    (already scaled: ``(q·s)·kᵀ`` for the host's ``(q·kᵀ)·s``), ``"k"``, ``"attn"`` (the softmax map), ``"v"`` — and
    the heads' output before ``proj`` passes ``"out"``. The learned attention bias is added to the logits before
    the softmax, as the host does. Subclasses (fake quantization) override :meth:`site`; the layer swaps in by
    ``__class__`` so its parameters keep their names."""

    host_class: ClassVar[type] = EfficientFormerAttention

    def site(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3)  # [B, H, N, 2·kd + vd]
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        q = self.site("q", q * self.scale)
        k = self.site("k", k)
        attn = (q @ k.transpose(-2, -1) + attention_bias(self, x.device)).softmax(dim=-1)  # [B, H, N, N]
        attn = self.site("attn", attn)
        v = self.site("v", v)
        x = self.site("out", (attn @ v).transpose(1, 2).reshape(B, N, self.val_attn_dim))  # [B, N, H·vd]
        return self.proj(x)


class EfficientFormerAdapter(HybridAdapter):
    """timm ``EfficientFormer``: attention blocks are the ``MetaBlock1d`` of the last stage, conv layers the rest."""

    name = "timm EfficientFormer"
    family = "EfficientFormer"
    model_class = EfficientFormer
    layout = BlockLayout(attn_norm="norm1", attn="token_mixer", mlp_norm="norm2", mlp="mlp")
    methods = EFFICIENTFORMER_METHODS

    def attention_blocks(self, model: nn.Module) -> list[tuple[str, nn.Module, int]]:
        return [
            (f"stages.{s}.blocks.{j}", blk, s)
            for s, stage in enumerate(model.stages)
            for j, blk in enumerate(stage.blocks)
            if isinstance(blk, MetaBlock1d)
        ]

    def stage_grids(self, model: nn.Module) -> list[tuple[int, int]]:
        _, h, w = self.input_size(model)
        grid = stem_grid((h, w), int(model.stem.stride))
        grids = []
        for stage in model.stages:
            if isinstance(stage.downsample, Downsample):
                grid = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)  # 3×3 stride-2 pad-1 conv
            grids.append(grid)
        return grids

    def describe(self, model: nn.Module) -> HybridInfo:
        if not isinstance(model, EfficientFormer):
            raise UnsupportedModelError(f"{type(model).__name__} is not a timm EfficientFormer")
        check_modules(model, _HANDLED, "EfficientFormer")
        grids = self.stage_grids(model)
        heads, dims, hidden, widths, tokens, stages, names = ([] for _ in range(7))
        for name, blk, s in self.attention_blocks(model):
            attn, mlp = blk.token_mixer, blk.mlp
            if not isinstance(attn, EfficientFormerAttention) or not isinstance(mlp, Mlp):
                raise UnsupportedModelError(f"{name}: attention / MLP of an unexpected class")
            if not isinstance(mlp.fc1, nn.Linear) or not isinstance(mlp.fc2, nn.Linear):
                raise UnsupportedModelError(f"{name}.mlp: fc1 / fc2 must be nn.Linear (fold LoRA first)")
            n = grids[s][0] * grids[s][1]
            if attn.attention_bias_idxs.shape[0] != n:
                side = int(round(attn.attention_bias_idxs.shape[0] ** 0.5))
                raise UnsupportedModelError(
                    f"{name}.token_mixer has attention biases for a {side}×{side} token grid but the input size "
                    f"{self.input_size(model)[1:]} gives {grids[s][0]}×{grids[s][1]}: EfficientFormer's attention "
                    "biases are fixed at 7×7 (224×224 input)"
                )
            heads.append(int(attn.num_heads))
            dims.append(int(attn.key_dim))
            hidden.append(int(mlp.fc1.out_features))
            widths.append(int(blk.norm1.normalized_shape[0]))
            tokens.append(n)
            stages.append(s)
            names.append(name)
        if not names:
            raise UnsupportedModelError("this EfficientFormer has no attention block (num_vit=0): nothing to adapt")
        c, h, w = self.input_size(model)
        first = stages[0]
        stride = int(model.stem.stride) * 2 ** sum(
            1 for st in list(model.stages)[: first + 1] if isinstance(st.downsample, Downsample)
        )
        return HybridInfo(
            arch=arch_name(model),
            depth=len(names),
            embed_dim=widths[0],
            num_heads=tuple(heads),
            head_dim=tuple(dims),
            mlp_hidden=tuple(hidden),
            block_dims=tuple(widths),
            block_tokens=tuple(tokens),
            block_spans=tuple(tokens),
            block_stages=tuple(stages),
            num_features=int(model.num_features),
            global_pool=str(model.global_pool),
            patch_size=(stride, stride),
            grid_size=grids[first],
            img_size=(h, w),
            in_chans=c,
            num_classes=int(model.num_classes),
            block_names=tuple(names),
            features=frozenset({"conv_stages", "attention_bias", "head_major_qkv", "layer_scale", "dist_head"}),
        )

    def outer_layers(self, model: nn.Module) -> OuterLayers:
        return OuterLayers(
            patch_proj_name="stem.conv1",
            patch_proj=model.stem.conv1,
            prefix_tokens=(),
            positions=None,
            pre_norm=nn.Identity(),
            final_norm=model.norm,
            pool_norm=nn.Identity(),
        )

    def heads(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [("head", model.head), ("head_dist", model.head_dist)]

    def _head_names(self) -> tuple[str, ...]:
        return ("head", "head_dist")


TIMM_EFFICIENTFORMER = register_adapter(EfficientFormerAdapter())
