"""Adapter for timm's plain ``VisionTransformer`` family (ViT, DeiT, distilled DeiT, DeiT3, registers, ...), including
GLU MLPs (``SwiGLU``, ``GluMlp`` / ``SwiGLUPacked``, ViTamin's ``GeGluMlp``: see :mod:`.timm_mlp`) and a conv stem
(``HybridEmbed``, e.g. ViTamin's MbConv stem: see :mod:`.timm_vit_stem`).

This is the only module that knows timm's internals. It answers "where are the blocks, attention, MLP,
norms, prefix tokens, heads" and raises :class:`~vitkit.errors.UnsupportedModelError` naming any feature
it does not handle, so that no method ever patches a model silently wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
from timm.layers import Attention, LayerScale
from timm.models.vision_transformer import Block, VisionTransformer

from ..errors import UnsupportedModelError
from . import timm_mlp, timm_vit_stem
from .protocol import arch_name, check_host_module

#: Visual-prompt tokens inserted by vitkit (``vitkit.adapt`` VPT) right after cls/dist/register tokens; they
#: count as prefix tokens (``num_prefix_tokens`` includes them) so token reduction never merges or drops them.
PROMPT_TOKENS_ATTR = "vitkit_prompt_tokens"

_SUPPORTED_FAMILIES = (
    "timm VisionTransformer models (ViT, DeiT, distilled DeiT, DeiT3, register/avg-pool variants, GLU MLPs, "
    "a HybridEmbed conv stem: ViTamin)"
)


@dataclass(frozen=True)
class BlockParts:
    """The pieces of one pre-norm transformer block: ``x + dp1(ls1(attn(norm1(x))))``, then the MLP twin."""

    norm1: nn.Module
    attn: Attention
    ls1: nn.Module
    drop_path1: nn.Module
    norm2: nn.Module
    mlp: nn.Module
    ls2: nn.Module
    drop_path2: nn.Module


@dataclass(frozen=True)
class ViTInfo:
    """What methods need to know about a plain ViT. ``features`` names the optional timm features in use."""

    arch: str
    depth: int
    embed_dim: int
    num_heads: tuple[int, ...]
    head_dim: tuple[int, ...]
    mlp_hidden: tuple[int, ...]
    num_prefix_tokens: int
    has_class_token: bool
    has_dist_token: bool
    num_reg_tokens: int
    global_pool: str
    patch_size: tuple[int, int]
    grid_size: tuple[int, int]
    img_size: tuple[int, int]
    in_chans: int
    num_classes: int
    block_names: tuple[str, ...]
    features: frozenset[str]
    num_prompt_tokens: int = 0
    pool_include_prefix: bool = False  # average pooling includes the prefix tokens

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def num_tokens(self) -> int:
        """Tokens entering the first block at the default input size."""
        return self.num_patches + self.num_prefix_tokens

    # per-block geometry, as hierarchical hosts (Swin) report it: one width, all tokens, global attention
    @property
    def block_dims(self) -> tuple[int, ...]:
        return (self.embed_dim,) * self.depth

    @property
    def block_tokens(self) -> tuple[int, ...]:
        return (self.num_tokens,) * self.depth

    @property
    def block_spans(self) -> tuple[int, ...]:
        """Keys each query attends to, per block (every token: global attention)."""
        return self.block_tokens


def _not_plain(model: nn.Module, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{type(model).__name__} is not a plain ViT (yet): {why}; vitkit handles {_SUPPORTED_FAMILIES}"
    )


def describe(model: nn.Module) -> ViTInfo:
    """Inspect ``model`` and return its :class:`ViTInfo`, or raise ``UnsupportedModelError`` naming the feature."""
    if not isinstance(model, VisionTransformer):
        raise _not_plain(model, "it is not a timm VisionTransformer")
    from .timm_vit_pool import check_attention_pool

    check_attention_pool(model)
    if model.global_pool not in ("token", "avg", "map", ""):
        raise UnsupportedModelError(
            f"global_pool={model.global_pool!r} is not supported: use 'token', 'avg' or 'map' (attention pool)"
        )
    features: set[str] = set()
    if getattr(model, "attn_pool", None) is not None:
        features.add("attn_pool")
    heads, head_dims, hidden = [], [], []
    for i, blk in enumerate(model.blocks):
        parts = block_parts(blk, index=i)
        attn = parts.attn
        heads.append(int(attn.num_heads))
        head_dims.append(int(attn.head_dim))
        hidden.append(timm_mlp.mlp_hidden(parts.mlp))
        if isinstance(parts.ls1, LayerScale) or isinstance(parts.ls2, LayerScale):
            features.add("layer_scale")
        if not isinstance(attn.q_norm, nn.Identity):
            features.add("qk_norm")
        if not isinstance(attn.norm, nn.Identity):
            features.add("scale_norm")
        if getattr(attn, "gate", None) is not None:
            features.add("gated_attn")
        if timm_mlp.is_glu(parts.mlp, f"blocks.{i}.mlp"):
            features.add("glu_mlp")
        if not isinstance(timm_mlp.hidden_norm(parts.mlp), nn.Identity):
            features.add("mlp_norm")
    timm_vit_stem.check_stem(model)
    if timm_vit_stem.has_conv_stem(model):
        features.add("conv_stem")
    has_dist = getattr(model, "dist_token", None) is not None
    num_reg = int(getattr(model, "num_reg_tokens", 0) or 0)
    if has_dist:
        features.add("dist_token")
    if num_reg:
        features.add("reg_tokens")
    if not model.has_class_token:
        features.add("no_class_token")
    if model.global_pool == "avg":
        features.add("avg_pool")
    num_prompts = int(getattr(model, PROMPT_TOKENS_ATTR, 0) or 0)
    if num_prompts:
        features.add("prompts")
    expected_prefix = int(model.has_class_token) + int(has_dist) + num_reg + num_prompts
    if model.num_prefix_tokens != expected_prefix:
        raise UnsupportedModelError(
            f"num_prefix_tokens={model.num_prefix_tokens} does not match cls+dist+registers+prompts={expected_prefix}"
        )
    pe = model.patch_embed
    return ViTInfo(
        arch=arch_name(model),
        depth=len(model.blocks),
        embed_dim=int(model.embed_dim),
        num_heads=tuple(heads),
        head_dim=tuple(head_dims),
        mlp_hidden=tuple(hidden),
        num_prefix_tokens=int(model.num_prefix_tokens),
        has_class_token=bool(model.has_class_token),
        has_dist_token=has_dist,
        num_reg_tokens=num_reg,
        global_pool=str(model.global_pool),
        patch_size=timm_vit_stem.patch_stride(model),
        grid_size=tuple(int(g) for g in pe.grid_size),
        img_size=tuple(int(s) for s in pe.img_size),
        in_chans=timm_vit_stem.in_chans(model),
        num_classes=int(model.num_classes),
        block_names=tuple(f"blocks.{i}" for i in range(len(model.blocks))),
        features=frozenset(features),
        num_prompt_tokens=num_prompts,
        pool_include_prefix=bool(getattr(model, "pool_include_prefix", False)),
    )


def block_parts(block: nn.Module, *, index: int | None = None) -> BlockParts:
    """The sub-modules of a timm pre-norm ``Block`` (or a vitkit patch of it)."""
    where = f"blocks.{index}" if index is not None else "block"
    if not isinstance(block, Block):
        raise UnsupportedModelError(
            f"{where} is a {type(block).__name__}; only timm's pre-norm Block is supported "
            "(not ResPostBlock / ParallelScalingBlock / ParallelThingsBlock)"
        )
    if not isinstance(block.attn, Attention):
        raise UnsupportedModelError(
            f"{where}.attn is a {type(block.attn).__name__}; only timm's Attention is supported "
            "(no RoPE/diff attention)"
        )
    check_host_module(block.attn, Attention, f"{where}.attn")
    return BlockParts(
        block.norm1, block.attn, block.ls1, block.drop_path1, block.norm2, block.mlp, block.ls2, block.drop_path2
    )


def block_linears(block: nn.Module, *, index: int | None = None) -> dict[str, nn.Module | None]:
    """The Linear layers of one block by role: ``qkv``, ``attn_out``, ``attn_gate`` (None without a gate),
    ``mlp_in``, ``mlp_out``, and ``mlp_gate`` for a split GLU (``mlp_in`` is then its value Linear; a packed GLU's
    ``mlp_in`` stacks two rows per neuron): see :func:`.timm_mlp.mlp_block_linears`."""
    parts = block_parts(block, index=index)
    attn = parts.attn
    where = f"blocks.{index}.mlp" if index is not None else "mlp"
    timm_mlp.mlp_kind(parts.mlp, where)
    return {
        "qkv": attn.qkv,
        "attn_out": attn.proj,
        "attn_gate": getattr(attn, "gate", None),
        **timm_mlp.mlp_block_linears(parts.mlp),
    }


def residual_branches(block: nn.Module, *, index: int | None = None) -> tuple[nn.Module, nn.Module]:
    """The attention and the MLP residual branch of a pre-norm block as modules sharing its weights:
    ``norm1 → attn`` and ``norm2 → mlp`` (no layer scale, drop path or residual add)."""
    parts = block_parts(block, index=index)
    return nn.Sequential(parts.norm1, parts.attn), nn.Sequential(parts.norm2, parts.mlp)


def feature_norm(model: nn.Module) -> nn.Module | None:
    """The norm the pooled feature has passed before the classifier: ``fc_norm`` for average pooling, the
    final token norm for [CLS] pooling."""
    fc_norm = getattr(model, "fc_norm", None)
    return fc_norm if isinstance(fc_norm, nn.LayerNorm) else getattr(model, "norm", None)


def classifier_heads(model: VisionTransformer) -> list[nn.Module]:
    """The classifier head(s): ``head``, plus ``head_dist`` on distilled DeiT."""
    heads = [model.head]
    if getattr(model, "head_dist", None) is not None:
        heads.append(model.head_dist)
    return heads


def input_size(model: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) the model expects, from its patch embedding (works for any timm ViT; a conv stem's channels are its
    first conv's)."""
    pe = getattr(model, "patch_embed", None)
    if pe is None or not hasattr(pe, "img_size"):
        raise _not_plain(model, "it has no patch_embed with an img_size")
    return timm_vit_stem.in_chans(model), int(pe.img_size[0]), int(pe.img_size[1])
