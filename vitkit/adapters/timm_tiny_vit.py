"""Adapter for timm's ``TinyVit`` (Wu et al., ECCV 2022, "TinyViT: Fast Pretraining Distillation for Small Vision
Transformers"): a conv stem and an MBConv stage, then stages of windowed attention blocks.

A ``TinyVitBlock`` computes, on ``x`` ``[B, H, W, C]``, ``x + dp1(merge_windows(attn(partition(x))))``, a depthwise
``local_conv`` (3×3 conv + BN, no residual), then ``x + dp2(mlp(x))``; its ``Attention`` normalizes inside
(``norm → qkv``), splits the fused ``qkv`` head-major (per head ``[q | k | v]``) and adds a learned bias per head
and window offset (LeViT's attention bias, Graham et al., ICCV 2021, eq. 1: ``softmax(QKᵀ/√d + B)V``); its
``NormMlp`` normalizes inside too (``norm → fc1 → GELU → fc2``), so an AdaptFormer branch is attached between
the norm and ``fc1`` (:meth:`TinyViTAdapter.branch_class`). The shared logic is in :mod:`.timm_hybrid`.

The attention runs inside fixed windows of any input grid (padding as needed), so TinyViT takes any input size:
its size for vitkit is ``pretrained_cfg["input_size"]`` (set it with ``pretrained_cfg_overlay``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn
from timm.layers import DropPath, LayerNorm2d, NormMlpClassifierHead, SelectAdaptivePool2d
from timm.models.tiny_vit import (
    Attention as TinyVitAttention,
)
from timm.models.tiny_vit import (
    ConvLayer,
    ConvNorm,
    MBConv,
    NormMlp,
    PatchEmbed,
    PatchMerging,
    TinyVit,
    TinyVitBlock,
    TinyVitStage,
)

from ..errors import UnsupportedModelError
from ..patching import mixin_class
from .protocol import arch_name, register_adapter, register_explicit_attention
from .timm_hybrid import BlockLayout, HybridAdapter, HybridInfo, attention_bias, check_modules, stem_grid
from .timm_vit_layers import OuterLayers

#: methods that apply to TinyViT (what a refusal points the user to)
TINY_VIT_METHODS = (
    "ptq, mixed_ptq, precision, prune (heads, mlp, blocks), lora, lora_merge, adapter, merge, finetune, distill"
)

#: every module class a TinyViT may contain (vitkit's own patches and quantizers are accepted besides)
_HANDLED = (
    TinyVit,
    PatchEmbed,
    ConvNorm,
    ConvLayer,
    MBConv,
    TinyVitStage,
    PatchMerging,
    TinyVitBlock,
    TinyVitAttention,
    NormMlp,
    NormMlpClassifierHead,
    SelectAdaptivePool2d,
    LayerNorm2d,
    nn.Sequential,
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.Linear,
    nn.LayerNorm,
    nn.GELU,
    nn.Identity,
    nn.Dropout,
    nn.Flatten,
    nn.AdaptiveAvgPool2d,
    DropPath,
)


@register_explicit_attention
class ExplicitTinyVitAttention(TinyVitAttention):
    """TinyViT's ``Attention`` with explicit ``q·kᵀ`` and ``attn·v`` matmuls (no fused SDPA kernel), each matmul input
    passed through :meth:`site` — ``"q"`` (already scaled), ``"k"``, ``"attn"`` (the softmax map), ``"v"`` — and the
    heads' output before ``proj`` through ``"out"``. The learned attention bias is added to the logits before the
    softmax, as the host does, so the quantized map is the biased one. Subclasses (fake quantization) override
    :meth:`site`; the layer swaps in by ``__class__`` so its parameters keep their names."""

    host_class: ClassVar[type] = TinyVitAttention

    def site(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = attention_bias(self, x.device)  # [H, N, N]
        B, N, _ = x.shape
        x = self.norm(x)
        qkv = self.qkv(x).view(B, N, self.num_heads, -1)  # [B, N, H, 2·kd + vd], head-major
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)  # [B, H, N, d]
        q = self.site("q", q * self.scale)
        k = self.site("k", k)
        attn = (q @ k.transpose(-2, -1) + bias).softmax(dim=-1)  # [B, H, N, N]
        attn = self.site("attn", attn)
        v = self.site("v", v)
        x = self.site("out", (attn @ v).transpose(1, 2).reshape(B, N, self.out_dim))  # [B, N, H·vd]
        return self.proj(x)


class _NormFirst(nn.Module):
    """``NormMlp`` with a parallel branch (AdaptFormer Eq. 4, Chen et al., NeurIPS 2022): normalize once, then the
    MLP body and the branch both read ``norm(x)`` — what a pre-norm ViT's MLP and branch read."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.norm(x))


class _NormMlpBody(nn.Module):
    """``NormMlp`` without its norm (applied by :class:`_NormFirst`): ``fc2(drop(act(fc1(h))))``."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(h)))))


class TinyViTAdapter(HybridAdapter):
    """timm ``TinyVit``: attention blocks ``stages.{s}.blocks.{j}`` (s ≥ 1), conv layers everywhere else."""

    name = "timm TinyVit"
    family = "TinyVit"
    model_class = TinyVit
    layout = BlockLayout(attn_norm="attn.norm", attn="attn", mlp_norm="mlp.norm", mlp="mlp")
    methods = TINY_VIT_METHODS
    grid_blocks = True

    def attention_blocks(self, model: nn.Module) -> list[tuple[str, nn.Module, int]]:
        return [
            (f"stages.{s}.blocks.{j}", blk, s)
            for s, stage in enumerate(model.stages)
            if isinstance(stage, TinyVitStage)
            for j, blk in enumerate(stage.blocks)
        ]

    def stage_grids(self, model: nn.Module) -> list[tuple[int, int]]:
        _, h, w = self.input_size(model)
        grid = stem_grid((h, w), int(model.patch_embed.stride))
        grids = []
        for stage in model.stages:
            if isinstance(stage, TinyVitStage) and not isinstance(stage.downsample, nn.Identity):
                grid = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)  # PatchMerging: 3×3 stride-2 pad-1 conv
            grids.append(grid)
        return grids

    def stage_window(self, model: nn.Module, stage: int) -> tuple[int, int] | None:
        st = model.stages[stage]
        if isinstance(st, TinyVitStage) and len(st.blocks):
            return (int(st.blocks[0].window_size),) * 2
        return None

    def describe(self, model: nn.Module) -> HybridInfo:
        if not isinstance(model, TinyVit):
            raise UnsupportedModelError(f"{type(model).__name__} is not a timm TinyVit")
        check_modules(model, _HANDLED, "TinyVit")
        if not isinstance(model.stages[0], ConvLayer) or any(
            not isinstance(s, TinyVitStage) for s in list(model.stages)[1:]
        ):
            raise UnsupportedModelError("TinyVit stages must be one ConvLayer then TinyVitStages")
        head = model.head
        if not isinstance(head, NormMlpClassifierHead) or not isinstance(head.pre_logits, nn.Identity):
            raise UnsupportedModelError(
                "TinyVit head.pre_logits is not an Identity: a hidden head layer is not handled"
            )
        grids = self.stage_grids(model)
        heads, dims, hidden, widths, tokens, spans, stages, names = ([] for _ in range(8))
        for name, blk, s in self.attention_blocks(model):
            attn, mlp = blk.attn, blk.mlp
            if not isinstance(attn, TinyVitAttention) or not isinstance(mlp, NormMlp):
                raise UnsupportedModelError(f"{name}: attention / MLP of an unexpected class")
            if not isinstance(mlp.fc1, nn.Linear) or not isinstance(mlp.fc2, nn.Linear):
                raise UnsupportedModelError(f"{name}.mlp: fc1 / fc2 must be nn.Linear (fold LoRA first)")
            heads.append(int(attn.num_heads))
            dims.append(int(attn.key_dim))
            hidden.append(int(mlp.fc1.out_features))
            widths.append(int(blk.dim))
            tokens.append(grids[s][0] * grids[s][1])
            spans.append(min(int(blk.window_size) ** 2, grids[s][0] * grids[s][1]))
            stages.append(s)
            names.append(name)
        if not names:
            raise UnsupportedModelError("this TinyVit has no attention block")
        c, h, w = self.input_size(model)
        first = stages[0]
        stride = int(model.patch_embed.stride) * 2 ** sum(
            1 for st in list(model.stages)[: first + 1] if isinstance(st, TinyVitStage)
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
            block_spans=tuple(spans),
            block_stages=tuple(stages),
            num_features=int(model.num_features),
            global_pool=str(head.global_pool.pool_type),
            patch_size=(stride, stride),
            grid_size=grids[first],
            img_size=(h, w),
            in_chans=c,
            num_classes=int(model.num_classes),
            block_names=tuple(names),
            features=frozenset({"conv_stages", "windowed_attention", "attention_bias", "head_major_qkv"}),
        )

    branch_mlp_class = NormMlp

    def branch_class(self, mixin: type, mlp_class: type) -> type:
        """``_NormFirst → mixin → _NormMlpBody → NormMlp``: the branch reads the normalized input, as in a pre-norm
        block; the MLP's parameters keep their names (``mlp.norm``, ``mlp.fc1``, ``mlp.fc2``)."""
        body = mixin_class(_NormMlpBody, mlp_class, "NormMlpBody", module=__name__)
        inner = mixin_class(mixin, body, f"{mixin.__name__}Body", module=__name__)
        return mixin_class(_NormFirst, inner, mixin.__name__, module=__name__, doc=mixin.__doc__)

    def outer_layers(self, model: nn.Module) -> OuterLayers:
        return OuterLayers(
            patch_proj_name="patch_embed.conv1.conv",
            patch_proj=model.patch_embed.conv1.conv,
            prefix_tokens=(),
            positions=None,
            pre_norm=nn.Identity(),
            final_norm=model.head.norm,
            pool_norm=nn.Identity(),
        )

    def heads(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [("head.fc", model.head.fc)]

    def _head_names(self) -> tuple[str, ...]:
        return ("head.fc",)


TIMM_TINY_VIT = register_adapter(TinyViTAdapter())
