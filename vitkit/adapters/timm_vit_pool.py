"""The attention-pool head of timm ViTs (``global_pool='map'``: SigLIP towers, ViTamin-style models).

timm's ``AttentionPoolLatent`` is multi-head attention pooling (Lee et al., Set Transformer, 2019, "PMA"; the
SigLIP/"MAP" head): a learned latent query ``q = W_q·latent`` attends over the final tokens,
``o = W_o·softmax(q·kᵀ/√d)·v`` with ``[k, v] = W_kv·x``, then a residual MLP ``o + MLP(LN(o))``. Here:

* :func:`check_attention_pool` — the variants handled (else ``UnsupportedModelError`` naming the module);
* :class:`ExplicitAttentionPool` — the pool with both matmuls written out and a ``site`` hook at each matmul
  input, so quantization reaches the pool's own attention (registered as its explicit twin);
* :func:`pool_linear_roles` / :func:`pool_norm_linear_pairs` / :func:`pool_core` — the pool's layers by role;
* :func:`attention_pool` — the pool over tokens that may have been merged: each token's attention logit gets
  ``+ log(size)`` (ToMe's proportional attention, Bolya et al. 2023, Eq. 1) so a merged token weighs as the
  patches it stands for.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn
from timm.layers import AttentionPoolLatent

from ..errors import UnsupportedModelError
from .protocol import AttentionCore, LinearRole, NormLinear, register_explicit_attention

POOL = "attn_pool"
#: the pool's Linear layers: (role, attribute path under the pool)
_POOL_LINEARS = (
    ("pool_q", "q"),
    ("pool_kv", "kv"),
    ("pool_out", "proj"),
    ("pool_mlp_in", "mlp.fc1"),
    ("pool_mlp_out", "mlp.fc2"),
)
#: linear roles of the attention pool (see :data:`vitkit.adapters.protocol.LINEAR_ROLES` for the blocks' roles)
POOL_ROLES = tuple(role for role, _ in _POOL_LINEARS)


def attention_pool_of(model: nn.Module) -> nn.Module | None:
    return getattr(model, POOL, None)


def check_attention_pool(model: nn.Module) -> None:
    """Refuse, naming the module, an attention pool this adapter does not handle."""
    pool = attention_pool_of(model)
    if pool is None:
        return
    if not isinstance(pool, AttentionPoolLatent):
        raise UnsupportedModelError(
            f"{POOL} is a {type(pool).__name__}: only timm's AttentionPoolLatent (global_pool='map') is handled"
        )
    if pool.pos_embed is not None:
        raise UnsupportedModelError(f"{POOL} has its own position embedding (pos_embed='abs'): not handled")
    if pool.mlp is None or not isinstance(getattr(pool.mlp, "fc1", None), nn.Linear):
        raise UnsupportedModelError(f"{POOL} has no MLP with fc1/fc2 Linears (out_features=0): not handled")
    if not isinstance(pool.q, (nn.Linear, nn.Identity)) or not isinstance(pool.kv, nn.Linear):
        raise UnsupportedModelError(f"{POOL}.q / .kv are not Linear layers: not handled")


def pool_linear_roles(model: nn.Module) -> dict[str, LinearRole]:
    """The pool's Linear layers in forward order (``q`` absent when the latent is the query itself)."""
    pool = attention_pool_of(model)
    if pool is None:
        return {}
    roles = {}
    for role, path in _POOL_LINEARS:
        module = pool.get_submodule(path)
        if isinstance(module, nn.Identity):
            continue
        name = f"{POOL}.{path}"
        roles[name] = LinearRole(name, role, None, role)
    return roles


def pool_norm_linear_pairs(model: nn.Module) -> list[NormLinear]:
    """``norm → attn_pool.kv`` (the final norm feeds the keys/values directly; not with ``fc_norm`` or
    ``pool_include_prefix`` variants — kept simple) and ``attn_pool.norm → attn_pool.mlp.fc1``."""
    pool = attention_pool_of(model)
    if pool is None:
        return []
    pairs = []
    if isinstance(getattr(model, "norm", None), nn.LayerNorm):
        pairs.append(NormLinear("norm", (f"{POOL}.kv",), "attn"))
    if isinstance(pool.norm, nn.LayerNorm):
        pairs.append(NormLinear(f"{POOL}.norm", (f"{POOL}.mlp.fc1",), "mlp"))
    return pairs


def pool_core(model: nn.Module) -> AttentionCore | None:
    """The pool's attention core (``block=None``: it runs after the blocks, right after ``attn_pool.kv``)."""
    pool = attention_pool_of(model)
    if pool is None:
        return None
    return AttentionCore(POOL, None, int(pool.num_heads), int(pool.head_dim), float(pool.scale))


def attention_pool(model: nn.Module, x: torch.Tensor, size: torch.Tensor | None = None) -> torch.Tensor:
    """The attention pool over ``x`` ``[B, N, D]`` (final-normed tokens, prefix tokens included or not as the
    model pools); ``size`` ``[B, N, 1]`` adds ``log(size)`` to each token's logit (proportional attention)."""
    pool = attention_pool_of(model)
    P = int(model.num_prefix_tokens)
    if not model.pool_include_prefix:
        x = x[:, P:]
        size = None if size is None else size[:, P:]
    if size is None:
        return pool(x)
    bias = size.log().transpose(1, 2).unsqueeze(1).to(x.dtype)  # [B, 1, 1, N]: every head, the one latent query
    return pool(x, attn_mask=bias)


@register_explicit_attention
class ExplicitAttentionPool(AttentionPoolLatent):
    """timm ``AttentionPoolLatent`` with explicit ``q·kᵀ`` and ``attn·v`` (no fused SDPA) and ``site`` hooks at
    ``"q"`` (scaled), ``"k"``, ``"attn"`` (softmax map), ``"v"`` and ``"out"`` (heads' output before ``proj``);
    the same arithmetic as timm's non-fused path otherwise (an additive ``attn_mask`` on the logits)."""

    host_class: ClassVar[type] = AttentionPoolLatent

    def site(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        L, H, d = self.latent_len, self.num_heads, self.head_dim
        q = self.q(self.latent.expand(B, -1, -1)).reshape(B, L, H, d).transpose(1, 2)  # [B,H,L,d]
        k, v = self.kv(x).reshape(B, N, 2, H, d).permute(2, 0, 3, 1, 4).unbind(0)  # each [B,H,N,d]
        q, k = self.q_norm(q), self.k_norm(k)
        q = self.site("q", q * self.scale)
        logits = q @ self.site("k", k).transpose(-2, -1)  # [B,H,L,N]
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
        elif attn_mask is not None:
            logits = logits + attn_mask
        attn = self.site("attn", logits.softmax(dim=-1))
        out = self.site("out", (attn @ self.site("v", v)).transpose(1, 2).reshape(B, L, C))  # [B,L,C]
        out = self.proj_drop(self.proj(out))
        out = out + self.mlp(self.norm(out))
        if self.pool == "token":
            return out[:, 0]
        return out.mean(1) if self.pool == "avg" else out
