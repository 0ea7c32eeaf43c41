"""Shared runtime patch for token reduction on the host model (through its adapter).

Every method plugs a per-block :class:`Reducer` into the same patch, placed where ToMe puts it: between
a block's attention and its MLP (``x ← x + Attn(LN1 x); x ← Reduce(x); x ← x + MLP(LN2 x)``).

What changes (``__class__`` swaps only; weights and state_dict keys are untouched):

* ``<Method><HostClass>`` (a subclass of the model's own class): ``forward_features`` / ``forward`` run the
  host forward through the adapter (``embed → blocks → pool → head``) with a per-forward
  :class:`TokenContext` (token sizes, the caller's attention mask following the tokens); average pooling
  weights each token by its size.
* ``<Method><BlockClass>`` (a subclass of the block's own class): runs the block as the adapter's
  ``attention_residual`` then ``mlp_residual``, with the reduction in between; attention is computed with
  extras (keys for matching, [CLS]/global attention for ranking) *only* in layers that need them or a size
  bias, keeping the fused ``scaled_dot_product_attention`` (proportional attention and caller masks go in
  its additive bias). A layer with nothing to do, before any reduction, calls the block's own ``forward`` —
  hence outputs are bit-identical at zero strength.

Prefix tokens (cls, dist, registers, prompts) are never merged or dropped and stay first.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from ..adapters.runtime import (
    HostRun,
    additive_mask,
    block_modules,
    block_state,
    outer_patches_lifted,
    take_rows,
    token_positions,
)
from ..errors import ConfigError
from ..history import drop_steps
from ..ops.token_merging import TokenReduction, proportional_attention_bias
from ..patching import mixin_class

_log = logging.getLogger(__name__)

ORIG_CLASS = "_vitkit_orig_class"
REDUCER = "_vitkit_reducer"
METHOD = "_vitkit_token_method"
PROP_ATTN = "_vitkit_prop_attn"
TOKEN_TRANSFORMS = ("tome", "evit", "pitome", "hiprune", "random_drop")


class TokenContext:
    """Per-forward state shared by the blocks: sizes, caller mask (additive, following tokens), scratch;
    ``host`` is the model's adapter (the blocks run their halves through it)."""

    def __init__(self, num_prefix: int, grid: tuple[int, int], prop_attn: bool, host) -> None:
        self.num_prefix = num_prefix
        self.grid = grid
        self.prop_attn = prop_attn
        self.host = host
        self.size: torch.Tensor | None = None  # [B, N, 1] once tokens were reduced
        self.mask: torch.Tensor | None = None  # [B|1, H|1, N|1, N] additive, after the first reduction
        self.reduced = False
        self.store: dict[str, torch.Tensor] = {}
        # host block arguments (e.g. rotary embeddings) for the current tokens, and the positions they follow from:
        # Σ size·position per token, [B|1, N, 2] (prefix rows 0), when the host's blocks depend on positions
        self.state: dict = {}
        self.position_sums: torch.Tensor | None = None
        self.restate = None  # positions [B, T, 2] → state (set by TokenRun)

    def start_positions(self, positions: torch.Tensor | None) -> None:
        """The patch tokens' positions ``[1, T, 2]`` entering the first block (None: the host has none)."""
        if positions is not None:
            prefix = positions.new_zeros(positions.shape[0], self.num_prefix, positions.shape[-1])
            self.position_sums = torch.cat([prefix, positions], dim=1)  # [1, N, 2]; every size is 1

    def follow_positions(self, red: TokenReduction) -> None:
        """Positions after ``red`` (called once ``size`` is the merged sizes): a merged token sits at the
        size-weighted mean of its sources' positions (the weights ToMe §3 averages features with, whatever weights
        the method merges features with). The sums Σ size·position merge by adding up, like the sizes; the host
        then recomputes its block state (e.g. rotary embeddings) at ``sums / size``."""
        if self.position_sums is None:
            return
        P = self.num_prefix
        self.position_sums = red.add_up(self.position_sums.expand(red.keep.shape[0], -1, -1))  # [B, N', 2]
        self.state = self.restate(self.position_sums[:, P:] / self.size[:, P:])  # positions [B, T', 2]

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


class TokenReductionBlock(nn.Module):
    """Mixin placed before the block's own class: a token-reduction step between attention and MLP (see
    module docstring)."""

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        ctx: TokenContext | None = None,
        **state,
    ) -> torch.Tensor:
        reducer: Reducer | None = getattr(self, REDUCER, None)
        state = state if ctx is None else ctx.state  # host block arguments for the current tokens (e.g. RoPE)
        if ctx is None or (reducer is None and not ctx.reduced):
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal, **state)
        # a block without a reducer after an earlier reduction still needs the size bias and the followed mask
        needs = reducer.needs(x.shape[1] - ctx.num_prefix) if reducer is not None else frozenset()
        if not ctx.reduced:
            if not needs:  # untouched tokens, nothing to do: the block's own forward, bit-exact
                return super().forward(x, attn_mask=attn_mask, is_causal=is_causal, **state)
            bias, causal = attn_mask, bool(is_causal)
        else:
            bias, causal = ctx.bias(x), False
        x, extras = ctx.host.attention_residual(self, x, bias=bias, is_causal=causal, needs=needs, **state)
        if needs:
            out = reducer.reduce(x, extras, ctx)
            if out is not None:
                red, weight = out
                if not ctx.reduced:  # from now on the caller's mask follows the tokens
                    ctx.mask = additive_mask(attn_mask, is_causal, x.shape[1], x)
                    ctx.reduced = True
                x, ctx.size = red.merge(x, ctx.size, weight)
                ctx.follow_positions(red)
                if ctx.mask is not None:
                    ctx.mask = _follow_mask(ctx.mask, red)
        return ctx.host.mlp_residual(self, x)


class TokenRun(HostRun):
    """The host forward with a :class:`TokenContext` through the blocks: token sizes for pooling, and every
    per-sample tensor of the context follows :meth:`take` (early exit on top of token reduction)."""

    def __init__(self, model: nn.Module, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> None:
        super().__init__(model, attn_mask, is_causal)
        self.ctx: TokenContext | None = None

    @property
    def size(self) -> torch.Tensor | None:
        return None if self.ctx is None else self.ctx.size  # [B, N, 1] once tokens were merged

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        m, host = self.model, self.host
        prop_attn = bool(getattr(m, PROP_ATTN, False))
        self.ctx = TokenContext(host.prefix_tokens(m), host.token_grid(m, x), prop_attn, host)
        tokens = super().embed(x)
        self.ctx.state = self.state
        self.ctx.start_positions(token_positions(host, m, x))
        self.ctx.restate = lambda positions: block_state(host, m, x, positions)
        return tokens

    def block_kwargs(self) -> dict:
        return {**super().block_kwargs(), "ctx": self.ctx}

    def take(self, keep: torch.Tensor, batch: int) -> None:
        super().take(keep, batch)
        if self.ctx is not None:
            self.ctx.size, self.ctx.mask = take_rows(self.ctx.size, keep, batch), take_rows(self.ctx.mask, keep, batch)
            self.ctx.store = {k: take_rows(v, keep, batch) for k, v in self.ctx.store.items()}
            self.ctx.state = {k: take_rows(v, keep, batch) for k, v in self.ctx.state.items()}
            self.ctx.position_sums = take_rows(self.ctx.position_sums, keep, batch)


class TokenReductionVisionTransformer(nn.Module):
    """Mixin placed before the model's own class: the host forward with a :class:`TokenContext` through the
    blocks, size-weighted average pooling. ``forward_head`` alone (without sizes) is the host's."""

    def vitkit_host_run(self, attn_mask: torch.Tensor | None, is_causal: bool) -> TokenRun:
        return TokenRun(self, attn_mask, is_causal)

    def forward_features(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        run = TokenRun(self, attn_mask, is_causal)
        return run.features(run.tokens(x))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
        run = TokenRun(self, attn_mask, is_causal)
        return run.logits(run.tokens(x))


def _patched_class(method: str, base: type, mixin: type) -> type:
    doc = f"{base.__name__} patched by vitkit for {method} token reduction. {mixin.__doc__}"
    return mixin_class(mixin, base, f"{method}{base.__name__}", module=__name__, doc=doc)


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
    blocks = block_modules(model)
    if len(reducers) != len(blocks):
        raise ValueError(f"{len(reducers)} reducers for {len(blocks)} blocks")
    setattr(model, ORIG_CLASS, type(model))
    model.__class__ = _patched_class(method, type(model), TokenReductionVisionTransformer)
    setattr(model, METHOD, method)
    setattr(model, PROP_ATTN, bool(prop_attn))
    for blk, red in zip(blocks, reducers, strict=True):
        setattr(blk, ORIG_CLASS, type(blk))
        blk.__class__ = _patched_class(method, type(blk), TokenReductionBlock)
        setattr(blk, REDUCER, red)


def remove(model: nn.Module) -> nn.Module:
    """Undo any vitkit token-reduction patch: original classes back, reducers and token steps dropped.

    A runtime patch applied after the token step (early exit) stays: its class is lifted off and put back on
    the restored host."""
    with outer_patches_lifted(model):
        for module in model.modules():
            orig = module.__dict__.pop(ORIG_CLASS, None)
            if orig is not None:
                module.__class__ = orig
            for attr in (REDUCER, METHOD, PROP_ATTN):
                module.__dict__.pop(attr, None)
        drop_steps(model, lambda s: s.name in TOKEN_TRANSFORMS)
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
