"""The timm ``VisionTransformer`` forward split into ``embed → blocks → pool → head`` (written once here).

The arithmetic is timm 1.0's own (``forward_features`` / ``forward_head``, and the distilled DeiT's head
averaging), so ``head(pool(blocks(embed(x))))`` is bit-identical to ``model(x)``. Inside a block the split is
``attention_residual`` (``x + dp1(ls1(attn(norm1 x)))``, optionally with what token reduction reads from the
attention) then ``mlp_residual`` (``x + dp2(ls2(mlp(norm2 x)))``): runtime patches put their step between the
two (token reduction: ToMe's place, between a block's attention and its MLP).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import Attention

from .runtime import additive_mask, attend, attention_probs, head_mean
from .timm_vit_pool import attention_pool


def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Images ``[B, C, H, W]`` → tokens ``[B, N, D]`` entering the first block: patch embedding, prefix tokens
    and positions (``_pos_embed``, so a prompt patch of it is honoured), patch dropout, pre-norm."""
    x = model.patch_embed(x)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    return model.norm_pre(x)


def token_grid(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """The patch grid ``(h, w)`` of images ``x`` (differs from the default with ``dynamic_img_size``)."""
    return tuple(model.patch_embed.dynamic_feat_size(tuple(x.shape[-2:])))


def prefix_tokens(model: nn.Module) -> int:
    """Tokens ahead of the patch tokens right now (cls, dist, registers, prompts)."""
    return int(model.num_prefix_tokens)


def final_norm(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Tokens after the last block → the final token features ``[B, N, D]`` (what ``forward_features`` returns)."""
    return model.norm(tokens)


def pool(model: nn.Module, tokens: torch.Tensor, *, size: torch.Tensor | None = None) -> torch.Tensor:
    """Tokens after the last block → pooled features: final norm, the model's pooling, ``fc_norm``.

    ``[B, D]``; ``[B, 2, D]`` (cls and dist token) for a distilled DeiT, whose :func:`head` averages two
    classifiers; the tokens unchanged for ``global_pool=""``. ``size`` (``[B, N, 1]``, token sizes after
    merging) weights average pooling so that each token counts for the patches it stands for."""
    x = model.norm(tokens)
    if isinstance(model, VisionTransformerDistilled):
        return x[:, :2]  # the distilled head reads the cls and dist tokens, without fc_norm
    if model.attn_pool is not None:
        x = attention_pool(model, x, size)
    elif size is None or model.global_pool != "avg":
        x = model.pool(x)
    else:
        P = model.num_prefix_tokens
        w = size[:, P:] if not model.pool_include_prefix else size  # [B, T, 1]
        feats = x[:, P:] if not model.pool_include_prefix else x  # [B, T, C]
        x = (feats * w).sum(dim=1) / w.sum(dim=1)  # [B, C]
    return model.fc_norm(x)


def head(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Pooled features → logits: head dropout, classifier; a distilled DeiT averages its two classifiers (and
    returns both in distilled training, as timm does)."""
    if isinstance(model, VisionTransformerDistilled):
        x, x_dist = model.head_drop(features[:, 0]), model.head_drop(features[:, 1])
        x, x_dist = model.head(x), model.head_dist(x_dist)
        if model.distilled_training and model.training and not torch.jit.is_scripting():
            return x, x_dist
        return (x + x_dist) / 2
    return model.head(model.head_drop(features))


def attention_with_extras(
    attn: nn.Module, x: torch.Tensor, bias: torch.Tensor | None, is_causal: bool, needs: frozenset[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """timm ``Attention.forward`` with the same numerics, plus what token reduction needs.

    extras: ``metric`` ``[B, N, head_dim]`` (keys after k_norm, mean over heads — ToMe §3), ``cls_attn``
    ``[B, N]`` (softmax row of token 0, mean over heads — EViT Eq. 4), ``global_attn`` ``[B, N]``
    (attention each token receives, mean over heads and queries — HiPrune's score). ``bias``: an additive
    attention bias (proportional attention, the caller's mask), passed to the fused kernel with ``scale=``.
    """
    B, N, _ = x.shape
    own_forward = type(attn) is not Attention  # a subclass (e.g. quantized attention) computes its own output
    if own_forward and callable(getattr(attn, "forward_and_qkv", None)):  # explicit attention (quantized, bf16)
        own_out, qkv_out = attn.forward_and_qkv(x, attn_mask=additive_mask(bias, is_causal, N, x))
        gate = None
    elif own_forward:  # its numerics are kept; the extras come from its own qkv projection
        seen: dict[str, torch.Tensor] = {}
        hook = attn.qkv.register_forward_hook(lambda _m, _i, out: seen.__setitem__("qkv", out))
        try:
            own_out = attn(x, attn_mask=additive_mask(bias, is_causal, N, x))
        finally:
            hook.remove()
        qkv_out, gate = seen["qkv"], None
    else:
        qkv_out = attn.qkv(x)
        gate = attn.gate(x).sigmoid() if attn.gate is not None else None
    qkv = qkv_out.reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)  # [3, B, H, N, hd]
    q, k, v = qkv.unbind(0)  # [B, H, N, hd] each
    q, k = attn.q_norm(q), attn.k_norm(k)
    extras: dict[str, torch.Tensor] = {}
    if "metric" in needs:
        extras["metric"] = head_mean(k)  # [B, N, hd]
    extras.update(attention_probs(attn, q, k, bias, is_causal, needs))
    if own_forward:
        return own_out, extras
    out = attend(attn, q, k, v, bias, is_causal)  # [B, H, N, hd]
    out = out.transpose(1, 2).reshape(B, N, attn.attn_dim)  # [B, N, H*hd]
    out = attn.norm(out)
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out)), extras


def attention_residual(
    block: nn.Module,
    x: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    is_causal: bool = False,
    needs: frozenset[str] = frozenset(),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The first half of a pre-norm block, ``x + dp1(ls1(attn(norm1 x)))``, with the extras ``needs`` names
    (see :func:`attention_with_extras`); without needs the block's own attention module runs (``bias`` as its
    ``attn_mask``; ``is_causal`` only matters with needs — turn a causal flag into ``bias`` otherwise)."""
    if not needs:
        y = block.attn(block.norm1(x), attn_mask=bias)
        extras: dict[str, torch.Tensor] = {}
    else:
        y, extras = attention_with_extras(block.attn, block.norm1(x), bias, is_causal, needs)
    return x + block.drop_path1(block.ls1(y)), extras


def mlp_residual(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The second half of a pre-norm block: ``x + dp2(ls2(mlp(norm2 x)))``."""
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
