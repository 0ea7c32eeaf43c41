"""Adapter for timm's ``Eva`` family: EVA and EVA-02 (Fang et al., "EVA-02: A Visual Representation for Neon
Genesis", 2023) — pre-norm ``EvaBlock`` with ``EvaAttention`` (a fused ``qkv`` with separate q/v biases in
tiny/small, ``q_proj`` / ``k_proj`` / ``v_proj`` in base/large; 2-D rotary position embedding on the patch tokens),
SwiGLU MLPs (packed ``GluMlp`` in tiny/small, split ``SwiGLU`` with a hidden norm in base/large) and LayerScale as
bare ``gamma_1`` / ``gamma_2`` parameters.

This module answers the static questions (what the model is, where its layers are, the role of every state-dict
key) and registers :class:`TimmEvaAdapter`; the forward split and RoPE (tracked through token merging) live in
:mod:`.timm_eva_forward`, shape surgery in :mod:`.timm_eva_surgery`, visual prompts in :mod:`.timm_eva_prompts`.
Anything not handled (post-norm blocks, ``AttentionRope``, mixed/DINOv3 RoPE, an attention-pool head, dynamic image
size, patch dropout, gated attention) raises :class:`~vitkit.errors.UnsupportedModelError` naming the module, before
any method touches the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.layers.pos_embed_sincos import RotaryEmbeddingCat
from timm.models.eva import Eva, EvaAttention, EvaBlock

from ..errors import UnsupportedModelError
from . import timm_eva_forward as fwd
from . import timm_eva_prompts as prompts
from . import timm_eva_surgery as surgery
from . import timm_mlp, timm_vit_keys
from . import timm_vit_host as _vit_first  # noqa: F401  (registered first: a bare ViT state dict's keys are EVA's too)
from .protocol import (
    AttentionCore,
    KeyRole,
    LinearRole,
    NormLinear,
    Stage,
    arch_name,
    register_adapter,
    register_explicit_attention,
)
from .timm_mlp import mlp_hidden, mlp_kind, mlp_linears  # noqa: F401  (shared MLP kinds, re-exported)
from .timm_vit import PROMPT_TOKENS_ATTR, ViTInfo
from .timm_vit_layers import BlockLayers, OuterLayers

_SUPPORTED = (
    "timm Eva models with pre-norm EvaBlock / EvaAttention (fused or separate q/k/v), 'cat' RoPE or none, and Mlp / "
    "GluMlp / SwiGLU MLPs (EVA, EVA-02)"
)


def _refuse(where: str, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{where}: {why}; vitkit's EVA adapter handles {_SUPPORTED}")


@dataclass(frozen=True)
class EvaBlockParts:
    """The pieces of one ``EvaBlock``: ``x + dp1(γ1·attn(norm1 x, rope))``, then ``x + dp2(γ2·mlp(norm2 x))``
    (``gamma_1`` / ``gamma_2`` are None without LayerScale)."""

    norm1: nn.Module
    attn: EvaAttention
    gamma_1: torch.Tensor | None
    drop_path1: nn.Module
    norm2: nn.Module
    mlp: nn.Module
    gamma_2: torch.Tensor | None
    drop_path2: nn.Module


def block_parts(block: nn.Module, *, index: int | None = None) -> EvaBlockParts:
    where = f"blocks.{index}" if index is not None else "block"
    if not isinstance(block, EvaBlock):
        raise _refuse(where, f"{type(block).__name__} is not handled (post-norm EvaBlockPostNorm is not)")
    attn = block.attn
    if not isinstance(attn, EvaAttention):
        raise _refuse(f"{where}.attn", f"{type(attn).__name__} is not handled (attn_type='rope' AttentionRope is not)")
    if getattr(attn, "gate", None) is not None:
        raise _refuse(f"{where}.attn.gate", "gated attention is not handled")
    mlp_kind(block.mlp, f"{where}.mlp")
    return EvaBlockParts(
        block.norm1, attn, block.gamma_1, block.drop_path1, block.norm2, block.mlp, block.gamma_2, block.drop_path2
    )


def check_model(model: nn.Module) -> None:
    """Refuse, naming the module, any feature of ``model`` this adapter does not handle."""
    if not isinstance(model, Eva):
        raise _refuse(type(model).__name__, "not a timm Eva")
    if getattr(model, "attn_pool", None) is not None:
        raise _refuse("attn_pool", f"the attention-pool head (global_pool={model.global_pool!r}) is not handled")
    if model.global_pool not in ("token", "avg", ""):
        raise _refuse("global_pool", f"{model.global_pool!r} pooling is not handled (use 'token' or 'avg')")
    if model.dynamic_img_size:
        raise _refuse("patch_embed", "dynamic_img_size is not handled (build the model with a fixed img_size)")
    if model.patch_drop is not None:
        raise _refuse("patch_drop", "patch dropout (patch_drop_rate > 0) is not handled")
    rope = model.rope
    if rope is not None:
        if getattr(model, "rope_mixed", False) or type(rope) is not RotaryEmbeddingCat:
            raise _refuse("rope", f"{type(rope).__name__} is not handled (only rope_type='cat' RotaryEmbeddingCat)")
        if rope.pos_embed is None or rope.feat_shape is None:
            raise _refuse("rope", "a RoPE without a cached grid (no feat_shape) is not handled")
        if rope.aug_active:
            raise _refuse("rope", "RoPE coordinate augmentation (shift/jitter/rescale) is not handled")
    for i, blk in enumerate(model.blocks):
        p = block_parts(blk, index=i)
        if int(p.attn.num_prefix_tokens) != int(model.num_prefix_tokens):
            raise _refuse(f"blocks.{i}.attn", "num_prefix_tokens differs from the model's")


def describe(model: nn.Module) -> ViTInfo:
    """The :class:`~.timm_vit.ViTInfo` of an Eva; ``features`` adds ``rope``, ``glu_mlp`` (SwiGLU), ``mlp_norm``."""
    check_model(model)
    features: set[str] = set()
    heads, dims, hidden = [], [], []
    for i, blk in enumerate(model.blocks):
        p = block_parts(blk, index=i)
        heads.append(int(p.attn.num_heads))
        dims.append(int(p.attn.head_dim))
        hidden.append(mlp_hidden(p.mlp))
        if p.gamma_1 is not None or p.gamma_2 is not None:
            features.add("layer_scale")
        if not isinstance(p.attn.q_norm, nn.Identity):
            features.add("qk_norm")
        if not isinstance(p.attn.norm, nn.Identity):
            features.add("scale_norm")
        if timm_mlp.is_glu(p.mlp, f"blocks.{i}.mlp"):
            features.add("glu_mlp")
        if not isinstance(timm_mlp.hidden_norm(p.mlp), nn.Identity):
            features.add("mlp_norm")
    if model.rope is not None:
        features.add("rope")
    num_reg = int(model.reg_token.shape[1]) if model.reg_token is not None else 0
    if num_reg:
        features.add("reg_tokens")
    has_cls = model.cls_token is not None
    if not has_cls:
        features.add("no_class_token")
    if model.global_pool == "avg":
        features.add("avg_pool")
    num_prompts = int(getattr(model, PROMPT_TOKENS_ATTR, 0) or 0)
    if num_prompts:
        features.add("prompts")
    pe = model.patch_embed
    return ViTInfo(
        arch=arch_name(model),
        depth=len(model.blocks),
        embed_dim=int(model.embed_dim),
        num_heads=tuple(heads),
        head_dim=tuple(dims),
        mlp_hidden=tuple(hidden),
        num_prefix_tokens=int(model.num_prefix_tokens),
        has_class_token=has_cls,
        has_dist_token=False,
        num_reg_tokens=num_reg,
        global_pool=str(model.global_pool),
        patch_size=tuple(int(s) for s in pe.patch_size),
        grid_size=tuple(int(g) for g in pe.grid_size),
        img_size=tuple(int(s) for s in pe.img_size),
        in_chans=int(pe.proj.in_channels),
        num_classes=int(model.num_classes),
        block_names=tuple(f"blocks.{i}" for i in range(len(model.blocks))),
        features=frozenset(features),
        num_prompt_tokens=num_prompts,
    )


# -- layers by role ------------------------------------------------------------------------------------------------
def attn_linears(attn: nn.Module) -> tuple[tuple[str, str], ...]:
    """``(attribute, role)`` of an attention's Linears in forward order: the fused ``qkv``, or ``q_proj`` / ``k_proj``
    / ``v_proj`` (``qkv_fused=False``, EVA-02 base/large) which all play ``qkv``; then ``proj``."""
    if attn.qkv is None:
        return (("q_proj", "qkv"), ("k_proj", "qkv"), ("v_proj", "qkv"), ("proj", "attn_out"))
    return (("qkv", "qkv"), ("proj", "attn_out"))


def block_linears(block: nn.Module, *, index: int | None = None) -> dict[str, nn.Module | None]:
    """``qkv`` / ``attn_out`` / ``attn_gate`` (None) / ``mlp_in`` / ``mlp_out``; separate projections give ``qkv``
    None and ``attn_q`` / ``attn_k`` / ``attn_v``; a split SwiGLU adds ``mlp_gate`` (``fc1_g``; ``mlp_in`` is the
    value ``fc1_x``). A packed GluMlp's ``mlp_in`` stacks gate and value rows of each neuron (``2·hidden`` rows)."""
    p = block_parts(block, index=index)
    out: dict[str, nn.Module | None] = {"qkv": p.attn.qkv, "attn_out": p.attn.proj, "attn_gate": None}
    if p.attn.qkv is None:
        out.update(attn_q=p.attn.q_proj, attn_k=p.attn.k_proj, attn_v=p.attn.v_proj)
    out.update(timm_mlp.mlp_block_linears(p.mlp))
    return out


def linear_roles(model: nn.Module) -> dict[str, LinearRole]:
    roles: dict[str, LinearRole] = {}
    for i, blk in enumerate(model.blocks):
        p = block_parts(blk, index=i)
        for attr, role in attn_linears(p.attn):
            name = f"blocks.{i}.attn.{attr}"
            roles[name] = LinearRole(name, role, i, attr)
        for attr, role in mlp_linears(p.mlp):
            name = f"blocks.{i}.mlp.{attr}"
            roles[name] = LinearRole(name, role, i, attr)
    if isinstance(model.head, nn.Linear):
        roles["head"] = LinearRole("head", "head", None, "head")
    return roles


def norm_linear_pairs(model: nn.Module) -> list[NormLinear]:
    """``norm1 → qkv`` and ``norm2 → fc1`` (SwiGLU: ``norm2 → (fc1_g, fc1_x)``: RepQ-ViT folds into both)."""
    pairs = []
    for i, blk in enumerate(model.blocks):
        p = block_parts(blk, index=i)
        qkv = tuple(f"blocks.{i}.attn.{a}" for a, role in attn_linears(p.attn) if role == "qkv")
        pairs.append(NormLinear(f"blocks.{i}.norm1", qkv, "attn"))
        pairs.append(timm_mlp.mlp_norm_linear(f"blocks.{i}", "norm2", "mlp", p.mlp))
    return pairs


def attention_cores(model: nn.Module) -> list[AttentionCore]:
    cores = []
    for i, blk in enumerate(model.blocks):
        a = block_parts(blk, index=i).attn
        cores.append(AttentionCore(f"blocks.{i}.attn", i, int(a.num_heads), int(a.head_dim), float(a.scale)))
    return cores


def outer_layers(model: nn.Module) -> OuterLayers:
    tokens = [t for t in (model.cls_token, model.reg_token) if t is not None]
    return OuterLayers(
        patch_proj_name="patch_embed.proj",
        patch_proj=model.patch_embed.proj,
        prefix_tokens=tuple(tokens),
        positions=model.pos_embed,
        pre_norm=model.norm_pre,
        final_norm=model.norm,
        pool_norm=model.fc_norm,
    )


def block_layers(block: nn.Module, *, index: int | None = None) -> BlockLayers:
    """Refused: the whole-block converters (integer-only inference) compute attention without RoPE / SwiGLU."""
    raise _refuse(
        f"blocks.{index}" if index is not None else "block",
        "whole-block conversion (integer-only inference) does not implement RoPE attention or SwiGLU",
    )


def feature_norm(model: nn.Module) -> nn.Module | None:
    return model.fc_norm if not isinstance(model.fc_norm, nn.Identity) else model.norm


# -- state-dict keys -----------------------------------------------------------------------------------------------
#: block key suffixes beyond the plain ViT's: EVA's separate q/v biases, bare LayerScale (GLU MLP keys:
#: :func:`.timm_mlp.mlp_key_parts`)
_EVA_BLOCK_KEYS = {
    "attn.q_bias": ("qkv_bias", "param"),
    "attn.q_proj.weight": ("attn_q", "weight"),
    "attn.q_proj.bias": ("attn_q", "bias"),
    "attn.k_proj.weight": ("attn_k", "weight"),
    "attn.v_proj.weight": ("attn_v", "weight"),
    "attn.v_proj.bias": ("attn_v", "bias"),
    "attn.v_bias": ("qkv_bias", "param"),
    "gamma_1": ("layer_scale", "param"),
    "gamma_2": ("layer_scale", "param"),
}
_EVA_SCALES = {"gamma_1": "attn_out", "gamma_2": "mlp_out"}


def key_roles(state_dict: Mapping[str, torch.Tensor]) -> dict[str, KeyRole]:
    """Roles as the plain ViT's (:func:`.timm_vit_keys.key_role`) plus EVA's own keys; ``qkv_bias`` (q/v biases),
    ``mlp_gate`` and ``mlp_norm`` have no unit-permutation rule, so permutation merging refuses them by name."""
    out = {}
    suffixes: dict[int, set[str]] = {}
    for key in state_dict:
        role = timm_vit_keys.key_role(key)
        if role.block is not None:
            suffixes.setdefault(role.block, set()).add(key.split(".", 2)[2])
    glu = {b: timm_mlp.mlp_key_parts(sfx) for b, sfx in suffixes.items()}
    for key in state_dict:
        role = timm_vit_keys.key_role(key)
        if role.block is not None:
            suffix = key.split(".", 2)[2]
            table = {**_EVA_BLOCK_KEYS, **glu[role.block]}
            if suffix in table:
                part, tensor = table[suffix]
                extra = {"module": key.rsplit(".", 1)[0] if "." in suffix else f"blocks.{role.block}"}
                if suffix in _EVA_SCALES:
                    extra["scales"] = _EVA_SCALES[suffix]
                role = KeyRole(key, role.block, part, tensor, extra)
        out[key] = role
    return out


def permutation_axes(roles: Mapping[str, KeyRole]) -> dict[str, tuple[tuple[int, str], ...]]:
    """The plain ViT's unit permutations; refused for EVA-only tensors, and for every RoPE model (rotating pairs of
    head dims tie q/k dims together: permuting the dims within a head is not a symmetry)."""
    for key, role in roles.items():
        if role.part in ("qkv_bias", "attn_q", "attn_k", "attn_v", *timm_mlp.GLU_PARTS):
            raise UnsupportedModelError(
                f"no known permutation symmetry for EVA tensor {key!r} (q/v biases, SwiGLU gate, MLP norm): use "
                "another merge method for this model"
            )
    raise UnsupportedModelError(
        "unit permutations of an EVA model are not implemented (RoPE ties q/k dims in rotating pairs and the "
        "packed SwiGLU stacks two rows per neuron): use another merge method for this model"
    )


class TimmEvaAdapter:
    """timm ``Eva`` (EVA, EVA-02): one stage, global attention with RoPE on the patch tokens."""

    name = "timm Eva (EVA-02)"

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, Eva)

    def describe(self, model: nn.Module) -> ViTInfo:
        return describe(model)

    def stages(self, model: nn.Module) -> list[Stage]:
        info = describe(model)
        return [Stage("blocks", info.block_names, info.grid_size)]

    def blocks(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(f"blocks.{i}", blk) for i, blk in enumerate(model.blocks)]

    def block_parts(self, block: nn.Module, *, index: int | None = None) -> EvaBlockParts:
        return block_parts(block, index=index)

    def norm_linear_pairs(self, model: nn.Module) -> list[NormLinear]:
        return norm_linear_pairs(model)

    def linear_roles(self, model: nn.Module) -> dict[str, LinearRole]:
        return linear_roles(model)

    def attention_cores(self, model: nn.Module) -> list[AttentionCore]:
        return attention_cores(model)

    def outer_layers(self, model: nn.Module) -> OuterLayers:
        return outer_layers(model)

    def block_layers(self, block: nn.Module, *, index: int | None = None) -> BlockLayers:
        return block_layers(block, index=index)

    def heads(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [("head", model.head)]

    def key_roles(self, state_dict: dict[str, torch.Tensor]) -> dict[str, KeyRole]:
        return key_roles(state_dict)

    def permutation_axes(self, roles):
        return permutation_axes(roles)

    def set_mlp_widths(self, model: nn.Module, widths: Sequence[int]) -> None:
        raise UnsupportedModelError("resizing EVA MLPs for permutation merging is not implemented")

    def input_size(self, model: nn.Module) -> tuple[int, int, int]:
        pe = model.patch_embed
        return int(pe.proj.in_channels), int(pe.img_size[0]), int(pe.img_size[1])

    def block_input_shape(self, model: nn.Module, index: int) -> tuple[int, ...]:
        info = describe(model)
        return (info.num_tokens, info.embed_dim)

    def embed(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return fwd.embed(model, x)

    def block_state(self, model: nn.Module, x: torch.Tensor, positions: torch.Tensor | None = None) -> dict:
        return fwd.block_state(model, x, positions)

    def token_positions(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        return fwd.token_positions(model, x)

    def pool(self, model: nn.Module, tokens: torch.Tensor, *, size: torch.Tensor | None = None) -> torch.Tensor:
        return fwd.pool(model, tokens, size=size)

    def head(self, model: nn.Module, features: torch.Tensor) -> torch.Tensor:
        return model.head(model.head_drop(features))

    def token_grid(self, model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
        return tuple(model.patch_embed.dynamic_feat_size(tuple(x.shape[-2:])))

    def prefix_tokens(self, model: nn.Module) -> int:
        return int(model.num_prefix_tokens)

    def final_norm(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        return model.norm(tokens)

    def feature_norm(self, model: nn.Module) -> nn.Module | None:
        return feature_norm(model)

    def attention_residual(
        self,
        block: nn.Module,
        x: torch.Tensor,
        *,
        bias: torch.Tensor | None = None,
        is_causal: bool = False,
        needs: frozenset[str] = frozenset(),
        rope: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return fwd.attention_residual(block, x, bias=bias, is_causal=is_causal, needs=needs, rope=rope)

    def mlp_residual(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return fwd.mlp_residual(block, x)

    def block_linears(self, block: nn.Module, *, index: int | None = None) -> dict[str, nn.Module | None]:
        return block_linears(block, index=index)

    def residual_branches(self, block: nn.Module, *, index: int | None = None) -> tuple[nn.Module, nn.Module]:
        p = block_parts(block, index=index)
        return fwd.AttentionBranch(p.norm1, p.attn), nn.Sequential(p.norm2, p.mlp)

    def route_linears(self, model: nn.Module, names: Sequence[str]) -> None:
        fwd.route_linears(model, names)

    def check_prunable(self, model: nn.Module, groups) -> None:
        check_model(model)
        surgery.check_prunable(model, groups)

    def prune_heads(self, block: nn.Module, keep, *, index: int | None = None) -> None:
        surgery.prune_heads(block_parts(block, index=index).attn, keep, where=_where(index))

    def prune_mlp(self, block: nn.Module, keep, *, index: int | None = None) -> None:
        surgery.prune_mlp(block_parts(block, index=index).mlp, keep, where=_where(index))

    def keep_blocks(self, model: nn.Module, keep) -> None:
        surgery.keep_blocks(model, keep)

    def check_prompt_tokens(self, model: nn.Module) -> None:
        check_model(model)

    def add_prompt_tokens(self, model: nn.Module, shallow: torch.Tensor, deep=(), *, dropout: float = 0.0) -> list[str]:
        check_model(model)
        return prompts.add_prompt_tokens(model, shallow, deep, dropout=dropout)

    def mlp_branch_dim(self, model: nn.Module, block_name: str) -> int:
        names = describe(model).block_names
        if block_name not in names:
            raise ValueError(f"{block_name!r} is not a block of this model; blocks are {list(names)}")
        return int(model.embed_dim)

    def add_mlp_branch(self, model: nn.Module, block_name: str, mixin: type, modules: dict, **attrs) -> str:
        return surgery.add_mlp_branch(model, block_name, mixin, modules, **attrs)


def _where(index: int | None) -> str:
    return f"blocks.{index}" if index is not None else "block"


TIMM_EVA = register_adapter(TimmEvaAdapter())


@register_explicit_attention
class ExplicitPrunedEvaAttention(fwd.ExplicitEvaAttention):
    """The explicit twin (:class:`.timm_eva_forward.ExplicitEvaAttention`) of a head-pruned core: it already handles
    any head count, so quantizing after pruning works alike."""

    host_class = surgery.PrunedEvaAttention
