"""Shared runtime patch for token reduction on timm ``VisionTransformer`` models.

Every method plugs a per-block :class:`Reducer` into the same patch, placed where ToMe puts it: between
a block's attention and its MLP (``x ← x + Attn(LN1 x); x ← Reduce(x); x ← x + MLP(LN2 x)``).

What changes (``__class__`` swaps only; weights and state_dict keys are untouched):

* ``<Method>VisionTransformer`` (a subclass of the model's own class): ``forward_features`` runs the
  blocks one by one with a per-forward :class:`TokenContext` (token sizes, the caller's attention mask
  following the tokens); ``forward`` pools avg-pool models with each token weighted by its size.
* ``<Method>Block`` (a subclass of timm's ``Block``): computes attention itself *only* in layers that
  need extras (keys for matching, [CLS]/global attention for ranking) or a size bias, keeping PyTorch's
  fused ``scaled_dot_product_attention`` (proportional attention and caller masks go in ``attn_mask``,
  ``scale=`` passed explicitly) and honouring ``head_dim``, ``q_norm``/``k_norm``, ``Attention.norm``,
  ``gate``, ``ls1``/``ls2``, ``drop_path1``/``drop_path2``. A layer with nothing to do, before any
  reduction, calls timm's own ``Block.forward`` — hence outputs are bit-identical at zero strength.

Prefix tokens (cls, dist, registers: ``num_prefix_tokens``) are never merged or dropped and stay first.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import Attention, Block

from ..errors import ConfigError
from ..history import drop_steps
from ..ops.token_merging import TokenReduction, proportional_attention_bias

_log = logging.getLogger(__name__)

ORIG_CLASS = "_vitkit_orig_class"
REDUCER = "_vitkit_reducer"
METHOD = "_vitkit_token_method"
PROP_ATTN = "_vitkit_prop_attn"
TOKEN_TRANSFORMS = ("tome", "evit", "pitome", "hiprune", "random_drop")


class TokenContext:
    """Per-forward state shared by the blocks: sizes, caller mask (additive, following tokens), scratch."""

    def __init__(self, num_prefix: int, grid: tuple[int, int], prop_attn: bool) -> None:
        self.num_prefix = num_prefix
        self.grid = grid
        self.prop_attn = prop_attn
        self.size: torch.Tensor | None = None  # [B, N, 1] once tokens were reduced
        self.mask: torch.Tensor | None = None  # [B|1, H|1, N|1, N] additive, after the first reduction
        self.reduced = False
        self.store: dict[str, torch.Tensor] = {}

    def bias(self, x: torch.Tensor) -> torch.Tensor | None:
        """Additive attention bias for the current tokens (caller mask + log size), or None."""
        bias = self.mask
        if self.prop_attn and self.size is not None:
            ps = proportional_attention_bias(self.size).to(x.dtype)  # [B, 1, 1, N]
            bias = ps if bias is None else bias + ps
        return bias


class Reducer:
    """Per-block plug-in. ``needs(T)`` names what attention must return at this layer for ``T`` patch
    tokens (subset of ``{"metric", "cls_attn", "global_attn", "tokens"}``; empty = nothing to do);
    ``reduce`` returns a :class:`TokenReduction` (and optional merge weights ``[B, N, 1]``) or None."""

    def needs(self, num_patch_tokens: int) -> frozenset[str]:
        return frozenset()

    def removal(self, num_patch_tokens: int) -> int:
        """Tokens removed at this layer (used to plan and report token counts)."""
        return 0

    def reduce(
        self, x: torch.Tensor, extras: dict[str, torch.Tensor], ctx: TokenContext
    ) -> tuple[TokenReduction, torch.Tensor | None] | None:
        return None


def _to_additive(attn_mask: torch.Tensor | None, is_causal: bool, n: int, like: torch.Tensor):
    """Caller mask (bool or float, any SDPA-broadcastable shape) / causal flag → 4-D additive float mask."""
    if is_causal:
        return like.new_full((n, n), float("-inf")).triu(1).reshape(1, 1, n, n)
    if attn_mask is None:
        return None
    if attn_mask.dtype == torch.bool:
        attn_mask = torch.zeros(attn_mask.shape, dtype=like.dtype, device=like.device).masked_fill(
            ~attn_mask, float("-inf")
        )
    while attn_mask.dim() < 4:
        attn_mask = attn_mask.unsqueeze(0)
    return attn_mask.to(like.dtype)


def _follow_mask(mask: torch.Tensor, red: TokenReduction) -> torch.Tensor:
    """Reduce a ``[Bm, Hm, Nq, Nk]`` mask with the tokens: each output token keeps its kept token's entries."""
    B, n_in, n_out = red.keep.shape[0], red.num_input, red.num_output
    Bm, Hm, Nq, Nk = mask.shape
    mask = mask.expand(B, Hm, Nq, Nk)
    if Nk == n_in:
        idx = red.keep[:, None, None, :].expand(B, Hm, Nq, n_out)  # [B, Hm, Nq, N']
        mask = mask.gather(3, idx)
    if Nq == n_in:
        idx = red.keep[:, None, :, None].expand(B, Hm, n_out, mask.shape[3])  # [B, Hm, N', Nk']
        mask = mask.gather(2, idx)
    return mask


def attention_with_extras(
    attn: nn.Module, x: torch.Tensor, bias: torch.Tensor | None, is_causal: bool, needs: frozenset[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """timm ``Attention.forward`` with the same numerics, plus what reducers need.

    extras: ``metric`` ``[B, N, head_dim]`` (keys after k_norm, mean over heads — ToMe §3), ``cls_attn``
    ``[B, N]`` (softmax row of token 0, mean over heads — EViT Eq. 4), ``global_attn`` ``[B, N]``
    (attention each token receives, mean over heads and queries — HiPrune's score).
    """
    B, N, _ = x.shape
    own_forward = type(attn) is not Attention  # a subclass (e.g. quantized attention) computes its own output
    if own_forward:  # its numerics (quantizers) are kept; the extras come from its own qkv projection
        seen: dict[str, torch.Tensor] = {}
        hook = attn.qkv.register_forward_hook(lambda _m, _i, out: seen.__setitem__("qkv", out))
        try:
            own_out = attn(x, attn_mask=_to_additive(bias, is_causal, N, x))
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
        extras["metric"] = k.mean(dim=1)  # [B, N, hd]
    if "global_attn" in needs or "cls_attn" in needs:
        qq = q if "global_attn" in needs else q[:, :, :1]  # [B, H, Nq, hd]
        logits = (qq * attn.scale) @ k.transpose(-2, -1)  # [B, H, Nq, N]
        b = _to_additive(bias, is_causal, N, logits)
        if b is not None:
            logits = logits + (b if b.shape[2] == 1 or qq.shape[2] == N else b[:, :, :1])
        probs = logits.softmax(dim=-1)  # [B, H, Nq, N]
        extras["cls_attn"] = probs[:, :, 0].mean(dim=1)  # [B, N]
        if "global_attn" in needs:
            extras["global_attn"] = probs.mean(dim=(1, 2))  # [B, N]
    if own_forward:
        return own_out, extras
    dropout_p = attn.attn_drop.p if attn.training else 0.0
    if attn.fused_attn:
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=dropout_p, is_causal=is_causal, scale=attn.scale
        )  # [B, H, N, hd]
    else:
        scores = (q * attn.scale) @ k.transpose(-2, -1)  # [B, H, N, N]
        b = _to_additive(bias, is_causal, N, scores)
        if b is not None:
            scores = scores + b
        out = attn.attn_drop(scores.softmax(dim=-1)) @ v  # [B, H, N, hd]
    out = out.transpose(1, 2).reshape(B, N, attn.attn_dim)  # [B, N, H*hd]
    out = attn.norm(out)
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out)), extras


class TokenReductionBlock(Block):
    """timm ``Block`` with a token-reduction step between attention and MLP (see module docstring)."""

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        ctx: TokenContext | None = None,
    ) -> torch.Tensor:
        reducer: Reducer | None = getattr(self, REDUCER, None)
        if ctx is None or (reducer is None and not ctx.reduced):
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        # a block without a reducer after an earlier reduction still needs the size bias and the followed mask
        needs = reducer.needs(x.shape[1] - ctx.num_prefix) if reducer is not None else frozenset()
        if not ctx.reduced:
            if not needs:  # untouched tokens, nothing to do: timm's own forward, bit-exact
                return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
            bias, causal = attn_mask, bool(is_causal)
        else:
            bias, causal = ctx.bias(x), False
        if not needs:
            y = self.attn(self.norm1(x), attn_mask=bias)
            extras: dict[str, torch.Tensor] = {}
        else:
            y, extras = attention_with_extras(self.attn, self.norm1(x), bias, causal, needs)
        x = x + self.drop_path1(self.ls1(y))
        if needs:
            out = reducer.reduce(x, extras, ctx)
            if out is not None:
                red, weight = out
                if not ctx.reduced:  # from now on the caller's mask follows the tokens
                    ctx.mask = _to_additive(attn_mask, is_causal, x.shape[1], x)
                    ctx.reduced = True
                x, ctx.size = red.merge(x, ctx.size, weight)
                if ctx.mask is not None:
                    ctx.mask = _follow_mask(ctx.mask, red)
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


class TokenReductionVisionTransformer(nn.Module):
    """Mixin placed before the model's own class: block loop with a :class:`TokenContext`, size-weighted
    average pooling. ``forward_head`` alone (without sizes) behaves as timm's."""

    def _token_forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        grid = self.patch_embed.dynamic_feat_size(tuple(x.shape[-2:]))
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        x = self.norm_pre(x)
        ctx = TokenContext(int(self.num_prefix_tokens), tuple(grid), bool(getattr(self, PROP_ATTN, False)))
        masked = attn_mask is not None or bool(is_causal)
        for blk in self.blocks:  # defaults not passed: tracers (ONNX) would turn a bool kwarg into a tensor
            x = blk(x, attn_mask=attn_mask, is_causal=is_causal, ctx=ctx) if masked else blk(x, ctx=ctx)
        return self.norm(x), ctx.size

    def forward_features(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        return self._token_forward(x, attn_mask, is_causal)[0]

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
        x, size = self._token_forward(x, attn_mask, is_causal)
        if size is None or self.global_pool != "avg" or self.attn_pool is not None:
            return self.forward_head(x)
        P = self.num_prefix_tokens
        w = size[:, P:] if not self.pool_include_prefix else size  # [B, T, 1]
        feats = x[:, P:] if not self.pool_include_prefix else x  # [B, T, C]
        pooled = (feats * w).sum(dim=1) / w.sum(dim=1)  # [B, C], each token counts for its patches
        pooled = self.head_drop(self.fc_norm(pooled))
        return self.head(pooled)


_CLASS_CACHE: dict[tuple[str, type, type], type] = {}


def _patched_class(method: str, base: type, mixin: type) -> type:
    key = (method, base, mixin)
    if key not in _CLASS_CACHE:
        name = f"{method}{base.__name__}"
        doc = f"{base.__name__} patched by vitkit for {method} token reduction. {mixin.__doc__}"
        bases = (mixin, base) if mixin is TokenReductionVisionTransformer else (mixin,)
        if mixin is TokenReductionBlock and base is not Block:
            bases = (mixin, base)
        cls = type(name, bases, {"__doc__": doc, "__module__": __name__})
        globals()[name] = cls  # importable by qualified name
        _CLASS_CACHE[key] = cls
    return _CLASS_CACHE[key]


def patched_method(model: nn.Module) -> str | None:
    return getattr(model, METHOD, None)


def check_not_patched(model: nn.Module) -> None:
    method = patched_method(model)
    if method is not None:
        raise ConfigError(
            f"model is already patched for token reduction ({method}); call vitkit.tokens.remove(model) first"
        )


def patch_model(model: nn.Module, method: str, reducers: Sequence[Reducer | None], *, prop_attn: bool) -> None:
    """Swap classes and attach one reducer per block (``None`` = block left as is)."""
    check_not_patched(model)
    if len(reducers) != len(model.blocks):
        raise ValueError(f"{len(reducers)} reducers for {len(model.blocks)} blocks")
    setattr(model, ORIG_CLASS, type(model))
    model.__class__ = _patched_class(method, type(model), TokenReductionVisionTransformer)
    setattr(model, METHOD, method)
    setattr(model, PROP_ATTN, bool(prop_attn))
    for blk, red in zip(model.blocks, reducers, strict=True):
        setattr(blk, ORIG_CLASS, type(blk))
        blk.__class__ = _patched_class(method, type(blk), TokenReductionBlock)
        setattr(blk, REDUCER, red)


def remove(model: nn.Module) -> nn.Module:
    """Undo any vitkit token-reduction patch: original classes back, reducers and token steps dropped.

    Early exits applied after the token step stay: their class is taken off and put back on the restored host."""
    from ..early_exit.runtime import detach_class
    from ..early_exit.runtime import patch as patch_exits

    exits = detach_class(model)
    for module in model.modules():
        orig = module.__dict__.pop(ORIG_CLASS, None)
        if orig is not None:
            module.__class__ = orig
        for attr in (REDUCER, METHOD, PROP_ATTN):
            module.__dict__.pop(attr, None)
    drop_steps(model, lambda s: s.name in TOKEN_TRANSFORMS)
    if exits is not None:
        patch_exits(model, exits)
    return model


def plan_tokens(num_tokens: int, num_prefix: int, reducers: Sequence[Reducer | None]) -> tuple[list[int], list[int]]:
    """Simulate one forward at ``num_tokens`` tokens: (tokens removed per layer, tokens entering each layer + out)."""
    n = num_tokens
    removed, counts = [], [n]
    for red in reducers:
        r = red.removal(n - num_prefix) if red is not None else 0
        removed.append(r)
        n -= r
        counts.append(n)
    return removed, counts


def capped_schedule(
    values: list[int], num_tokens: int, num_prefix: int, cap, *, what: str
) -> tuple[list[int], list[int]]:
    """Clip each layer's removal to ``cap(patch tokens)`` (warning once per layer), return (values, counts)."""
    out, n, counts = [], num_tokens, [num_tokens]
    for i, v in enumerate(values):
        c = cap(n - num_prefix)
        if v > c:
            _log.warning(
                "%s=%d at blocks.%d is too large for %d patch tokens: clipped to the maximum %d",
                what,
                v,
                i,
                n - num_prefix,
                c,
            )
            v = c
        out.append(v)
        n -= v
        counts.append(n)
    return out, counts


def token_summary(name: str, per_layer: Sequence, counts: Sequence[int]) -> str:
    c = list(counts)
    arrow = "→".join(str(v) for v in c) if len(c) <= 14 else f"{c[0]}→{c[1]}→…→{c[-2]}→{c[-1]}"
    return f"{name} per layer {list(per_layer)}; tokens {arrow}"


def mac_ratio(counts: Sequence[int], dim: int, mlp_hidden: int) -> float:
    """Theoretical block-MAC reduction: attention at the pre-reduction count, MLP at the post-reduction count."""

    def block(n_attn: int, n_mlp: int) -> float:
        return 4 * n_attn * dim * dim + 2 * n_attn * n_attn * dim + 2 * n_mlp * dim * mlp_hidden

    full = sum(block(counts[0], counts[0]) for _ in range(len(counts) - 1))
    red = sum(block(counts[i], counts[i + 1]) for i in range(len(counts) - 1))
    return full / red if red else math.inf
