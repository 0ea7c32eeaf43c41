"""The layers of a timm ``VisionTransformer`` by role: what quantization and reparameterization act on.

* :func:`linear_roles` — every Linear by role (``qkv`` / ``attn_out`` / ``mlp_in`` / ``mlp_out`` / ``head``; a conv
  stem's convs: ``conv``);
* :func:`norm_linear_pairs` — the LayerNorms that feed Linears directly (RepQ-ViT folds scales through them);
* :func:`attention_cores` — the module of each block that computes ``softmax(q·kᵀ·scale)·v``, with its heads;
* :func:`outer_layers` / :func:`block_layers` — the layers around and inside the blocks, for converters that
  rebuild the whole network (the integer-only path);
* :class:`ExplicitAttention` — timm's attention with both matmuls written out and a hook at each matmul input.

Names are module names relative to the model (as ``model.named_modules()`` gives them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
from timm.layers import Attention, LayerScale

from ..errors import UnsupportedModelError
from . import timm_mlp, timm_vit_stem
from .protocol import AttentionCore, LinearRole, NormLinear, register_explicit_attention
from .timm_vit import block_linears, block_parts, classifier_heads
from .timm_vit_pool import pool_core, pool_linear_roles, pool_norm_linear_pairs

#: (role, attribute) of each attention Linear, in forward order (the MLP's: :func:`.timm_mlp.mlp_linears`)
_ATTN_LINEARS = (("qkv", "qkv"), ("attn_out", "proj"))
_HEAD_NAMES = ("head", "head_dist")


def linear_roles(model: nn.Module) -> dict[str, LinearRole]:
    """``{name: LinearRole}`` in forward order: a conv stem's convs but the first (role ``conv``, see
    :mod:`.timm_vit_stem`), then per block qkv, attn_out (``proj``), mlp_in (``fc1``; a GLU's gate and value),
    mlp_out (``fc2`` / ``w2``) — whatever module sits there, so that a wrapped layer is reported by name rather than
    skipped — then the classifier head(s) that are Linears (``head``, ``head_dist`` on a distilled DeiT)."""
    roles = {name: LinearRole(name, "conv", None, "conv") for name in timm_vit_stem.conv_names(model)}
    for i, blk in enumerate(model.blocks):
        parts = block_parts(blk, index=i)
        for role, attr in _ATTN_LINEARS:
            if hasattr(parts.attn, attr):
                name = f"blocks.{i}.attn.{attr}"
                roles[name] = LinearRole(name, role, i, attr)
        timm_mlp.mlp_kind(parts.mlp, f"blocks.{i}.mlp")
        for attr, role in timm_mlp.mlp_linears(parts.mlp):
            name = f"blocks.{i}.mlp.{attr}"
            roles[name] = LinearRole(name, role, i, attr)
    roles.update(pool_linear_roles(model))
    for name, head in zip(_HEAD_NAMES, classifier_heads(model), strict=False):
        if isinstance(head, nn.Linear):
            roles[name] = LinearRole(name, "head", None, name)
    return roles


def norm_linear_pairs(model: nn.Module) -> list[NormLinear]:
    """Per block ``norm1 → qkv`` (role ``attn``) then ``norm2 → fc1`` (role ``mlp``; a split GLU: ``norm2 → (gate,
    value)``; ViTamin's GeGluMlp: its own input norm ``mlp.norm → (w0, w1)``, see :func:`.timm_mlp.mlp_norm_linear`)."""
    pairs = []
    for i, blk in enumerate(model.blocks):
        mlp = block_parts(blk, index=i).mlp
        timm_mlp.mlp_kind(mlp, f"blocks.{i}.mlp")
        pairs.append(NormLinear(f"blocks.{i}.norm1", (f"blocks.{i}.attn.qkv",), "attn"))
        pairs.append(timm_mlp.mlp_norm_linear(f"blocks.{i}", "norm2", "mlp", mlp))
    return pairs + pool_norm_linear_pairs(model)


def attention_cores(model: nn.Module) -> list[AttentionCore]:
    """Each block's attention module (q·kᵀ and attn·v happen inside it), with heads, head size and logit scale."""
    cores = []
    for i, blk in enumerate(model.blocks):
        attn = block_parts(blk, index=i).attn
        cores.append(AttentionCore(f"blocks.{i}.attn", i, int(attn.num_heads), int(attn.head_dim), float(attn.scale)))
    pool = pool_core(model)
    return cores if pool is None else [*cores, pool]


@dataclass(frozen=True)
class OuterLayers:
    """The layers around the blocks: the patch projection (``patch_proj_name`` relative to the model; a conv stem's
    first conv), the prefix
    token parameters in sequence order (cls, dist, registers; ``[1, n, D]`` each), the position embedding, the
    norm before the first block, the final norm and the norm after pooling (``nn.Identity`` when absent)."""

    patch_proj_name: str
    patch_proj: nn.Module
    prefix_tokens: tuple[torch.Tensor, ...]
    positions: torch.Tensor | None
    pre_norm: nn.Module
    final_norm: nn.Module
    pool_norm: nn.Module


def _or_identity(module: nn.Module | None) -> nn.Module:
    return nn.Identity() if module is None else module


def outer_layers(model: nn.Module) -> OuterLayers:
    tokens = [getattr(model, n, None) for n in ("cls_token", "dist_token", "reg_token")]
    proj = timm_vit_stem.patch_proj_name(model)
    return OuterLayers(
        patch_proj_name=proj,
        patch_proj=model.get_submodule(proj),
        prefix_tokens=tuple(t for t in tokens if t is not None),
        positions=getattr(model, "pos_embed", None),
        pre_norm=_or_identity(getattr(model, "norm_pre", None)),
        final_norm=model.norm,
        pool_norm=_or_identity(getattr(model, "fc_norm", None)),
    )


@dataclass(frozen=True)
class BlockLayers:
    """One pre-norm block by role: ``x + γ_attn·linears["attn_out"](attention(norms["attn"](x)))``, then
    ``x + γ_mlp·linears["mlp_out"](mlp_inner_norm(act(linears["mlp_in"](norms["mlp"](x)))))``. ``linears`` is keyed
    by linear role (``qkv``, ``attn_out``, ``mlp_in``, ``mlp_out``), ``norms`` and ``gammas`` (layer-scale vectors,
    None = no layer scale) by branch (``attn``, ``mlp``); ``attention`` is the attention core (it holds the
    ``qkv`` linear and, once quantized, the matmul-input quantizers)."""

    attention: nn.Module
    linears: dict[str, nn.Module]
    norms: dict[str, nn.Module]
    gammas: dict[str, torch.Tensor | None]
    act: nn.Module
    mlp_inner_norm: nn.Module


def _gamma(ls: nn.Module, where: str) -> torch.Tensor | None:
    if isinstance(ls, LayerScale):
        return ls.gamma
    if isinstance(ls, nn.Identity):
        return None
    raise UnsupportedModelError(f"{where} is a {type(ls).__name__}: only LayerScale or no layer scale is handled")


def block_layers(block: nn.Module, *, index: int | None = None) -> BlockLayers:
    """Refused for a GLU MLP (the whole-block converters compute ``fc2(act(fc1 x))``)."""
    p = block_parts(block, index=index)
    lin = block_linears(block, index=index)  # the same role table pruning reads
    where = f"blocks.{index}" if index is not None else "block"
    if timm_mlp.is_glu(p.mlp, f"{where}.mlp"):
        raise UnsupportedModelError(
            f"{where}.mlp is a {type(p.mlp).__name__} (GLU MLP): whole-block conversion (integer-only inference) "
            "implements fc2(act(fc1 x)) only"
        )
    return BlockLayers(
        attention=p.attn,
        linears={r: lin[r] for r in ("qkv", "attn_out", "mlp_in", "mlp_out")},
        norms={"attn": p.norm1, "mlp": p.norm2},
        gammas={
            "attn": _gamma(p.ls1, f"{where} attention layer scale"),
            "mlp": _gamma(p.ls2, f"{where} MLP layer scale"),
        },
        act=p.mlp.act,
        mlp_inner_norm=timm_mlp.hidden_norm(p.mlp),
    )


@register_explicit_attention
class ExplicitAttention(Attention):
    """timm ``Attention`` with explicit ``q·kᵀ`` and ``attn·v`` matmuls (no fused SDPA kernel), each matmul input
    passed through :meth:`site` — ``"q"`` (already scaled), ``"k"``, ``"attn"`` (the softmax map after dropout)
    and ``"v"``, and the heads' output before the output projection through ``"out"``; the base hook returns its
    input. An additive or boolean ``attn_mask`` (e.g. token merging's
    proportional-attention bias) is applied to the logits before the softmax. Subclasses (fake quantization)
    override :meth:`site`; the layer swaps in by ``__class__`` so its parameters keep their names."""

    #: the host class this explicit twin replaces
    host_class: ClassVar[type] = Attention

    def site(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        return self.forward_and_qkv(x, attn_mask, is_causal)[0]

    def forward_and_qkv(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(output, qkv projection output)``: token reduction reads its metric from the second without a
        forward hook (which ``torch.compile`` cannot trace)."""
        B, N, _ = x.shape
        qkv_out = self.qkv(x)
        qkv = qkv_out.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [3,B,H,N,d]
        q, k, v = qkv.unbind(0)  # each [B,H,N,d]
        q, k = self.q_norm(q), self.k_norm(k)
        q = self.site("q", q * self.scale)
        k = self.site("k", k)
        logits = q @ k.transpose(-2, -1)  # [B,H,N,N]
        if is_causal:
            logits = logits.masked_fill(logits.new_ones(N, N, dtype=torch.bool).triu(1), float("-inf"))
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
        elif attn_mask is not None:
            logits = logits + attn_mask
        attn = logits.softmax(dim=-1)  # [B,H,N,N]
        attn = self.site("attn", self.attn_drop(attn))
        v = self.site("v", v)
        x = self.site("out", (attn @ v).transpose(1, 2).reshape(B, N, self.attn_dim))  # [B,N,H*d]
        x = self.norm(x)
        x = self.proj(x)
        return self.proj_drop(x), qkv_out
