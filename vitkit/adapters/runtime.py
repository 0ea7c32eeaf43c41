"""Running the host forward block by block, and what runtime patches (token reduction, early exit) share.

:class:`HostRun` is one forward through the adapter — ``embed → block(i) … → logits`` — for callers that need
the block loop in their own hands (early exit leaves it per sample; exit heads read the tokens in between).
A runtime patch that keeps per-forward state (token reduction: token sizes and a mask that follows the
tokens) gives the model a ``vitkit_host_run(attn_mask, is_causal)`` method returning its own ``HostRun``;
:func:`host_run` picks it, so families compose without importing each other.

Runtime patches are ``__class__`` swaps. One that wraps others from outside (early exit, whose class sits on
top of the token-reduction class) defines ``vitkit_lift()``: take its class off, return what puts it back —
:func:`outer_patches_lifted` uses it around a change of the class underneath (``vitkit.tokens.remove``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from .protocol import adapter_for


def block_modules(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks in forward order (the adapter's ``blocks`` without their names)."""
    return [blk for _, blk in adapter_for(model).blocks(model)]


def additive_mask(attn_mask: torch.Tensor | None, is_causal: bool, n: int, like: torch.Tensor) -> torch.Tensor | None:
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


def attend(attn: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias, is_causal: bool) -> torch.Tensor:
    """``softmax(q·kᵀ·scale + bias)·v`` ``[B, H, N, d]`` the way a timm attention module computes it: the fused SDPA
    kernel when ``attn.fused_attn``, else the explicit matmuls (``attn.scale``, ``attn.attn_drop`` read from it)."""
    N = q.shape[-2]
    if attn.fused_attn:
        dropout_p = attn.attn_drop.p if attn.training else 0.0
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=dropout_p, is_causal=is_causal, scale=attn.scale
        )
    scores = (q * attn.scale) @ k.transpose(-2, -1)  # [B, H, N, N]
    b = additive_mask(bias, is_causal, N, scores)
    if b is not None:
        scores = scores + b
    return attn.attn_drop(scores.softmax(dim=-1)) @ v


def head_mean(t: torch.Tensor) -> torch.Tensor:
    """``t.mean(dim=1)`` for ``[B, H, N, d]`` (ToMe's key metric, §3: keys averaged over heads), summed head by
    head: on the head-split view of a qkv output ``mean(dim=1)`` walks memory badly (~5× slower on CPU); equal up
    to rounding."""
    acc = t[:, 0].clone()  # [B, N, d]
    for h in range(1, t.shape[1]):
        acc += t[:, h]
    return acc / t.shape[1]


def attention_probs(attn: nn.Module, q, k, bias, is_causal: bool, needs: frozenset[str]) -> dict[str, torch.Tensor]:
    """What token reduction reads from the attention map (``q``, ``k`` ``[B, H, N, d]`` as the core sees them):
    ``cls_attn`` (the first token's row, head-mean) and ``global_attn`` (attention each token receives) when named in
    ``needs``; only the rows needed are computed."""
    out: dict[str, torch.Tensor] = {}
    if "global_attn" not in needs and "cls_attn" not in needs:
        return out
    N = q.shape[-2]
    qq = q if "global_attn" in needs else q[:, :, :1]  # [B, H, Nq, d]
    logits = (qq * attn.scale) @ k.transpose(-2, -1)  # [B, H, Nq, N]
    b = additive_mask(bias, is_causal, N, logits)
    if b is not None:
        logits = logits + (b if b.shape[2] == 1 or qq.shape[2] == N else b[:, :, :1])
    probs = logits.softmax(dim=-1)  # [B, H, Nq, N]
    out["cls_attn"] = probs[:, :, 0].mean(dim=1)  # [B, N]
    if "global_attn" in needs:
        out["global_attn"] = probs.mean(dim=(1, 2))  # [B, N]
    return out


#: Attribute naming the dtype a reduced-precision model runs in (set by :mod:`vitkit.quant.precision`).
DTYPE_ATTR = "vitkit_dtype"


def reduced_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype ``model`` runs in when a precision step lowered it (inputs are cast to it), else None."""
    return getattr(model, DTYPE_ATTR, None)


class HostRun:
    """One forward's block loop through the host adapter: ``embed``, ``block(i)`` for ``i < depth``,
    ``logits`` (or ``features``) at the end; ``take`` keeps some samples only (per-sample early exit).

    ``size`` is ``None`` here (tokens are patches); a token-reduction run reports token sizes ``[B, N, 1]``."""

    def __init__(self, model: nn.Module, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> None:
        self.model, self.host = model, adapter_for(model)
        self._layers = block_modules(model)
        self.mask, self.causal = attn_mask, bool(is_causal)
        self.state: dict = {}  # the host's per-forward block arguments (EVA: rope), set by embed

    @property
    def depth(self) -> int:
        return len(self._layers)

    @property
    def size(self) -> torch.Tensor | None:
        return None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        dtype = reduced_dtype(self.model)
        x = x if dtype is None else x.to(dtype)
        self.state = block_state(self.host, self.model, x)
        return self.host.embed(self.model, x)  # [B, N, C]

    def block_kwargs(self) -> dict:
        # defaults not passed: tracers (ONNX) would turn a bool kwarg into a tensor
        kw = {"attn_mask": self.mask, "is_causal": self.causal} if (self.mask is not None or self.causal) else {}
        return {**kw, **self.state}

    def block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self._layers[i](x, **self.block_kwargs())

    def take(self, keep: torch.Tensor, batch: int) -> None:
        """Keep rows ``keep`` of every per-sample tensor this run carries (``batch``: the rows there were)."""
        self.mask = take_rows(self.mask, keep, batch)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens after the last block → final token features (the host's ``forward_features``)."""
        return self.host.final_norm(self.model, x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens after the last block → the model's own pooling and head (token sizes weighting the pool)."""
        out = self.host.head(self.model, self.host.pool(self.model, x, size=self.size))
        return out if reduced_dtype(self.model) is None else out.float()

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Images → tokens after the last block."""
        h = self.embed(x)
        for i in range(self.depth):
            h = self.block(i, h)
        return h


def block_state(host, model: nn.Module, x: torch.Tensor, positions: torch.Tensor | None = None) -> dict:
    """The host's per-forward block arguments (:meth:`HostAdapter.block_state`; ``{}`` for a host without)."""
    make = getattr(host, "block_state", None)
    return make(model, x, positions) if callable(make) else {}


def token_positions(host, model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """:meth:`HostAdapter.token_positions` (None for a host without)."""
    make = getattr(host, "token_positions", None)
    return make(model, x) if callable(make) else None


def take_rows(t, keep: torch.Tensor, batch: int):
    """``t`` with only rows ``keep`` when it is a per-sample tensor (first dim ``batch``), else ``t``."""
    return t.index_select(0, keep) if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == batch else t


def host_run(model: nn.Module, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> HostRun:
    """The :class:`HostRun` for ``model``: a runtime patch's own (``vitkit_host_run``) or the plain one."""
    make = getattr(model, "vitkit_host_run", None)
    return make(attn_mask, is_causal) if callable(make) else HostRun(model, attn_mask, is_causal)


@contextmanager
def outer_patches_lifted(model: nn.Module) -> Iterator[None]:
    """Take off the runtime class patch wrapping ``model`` from outside (``vitkit_lift``), run the body — which
    may change the class underneath — then put it back on the new class."""
    lift: Callable[[], Callable[[], None]] | None = getattr(model, "vitkit_lift", None)
    put_back = lift() if callable(lift) else None
    try:
        yield
    finally:
        if put_back is not None:
            put_back()
