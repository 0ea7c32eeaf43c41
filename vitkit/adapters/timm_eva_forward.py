"""The timm ``Eva`` forward split into ``embed → blocks → pool → head``, and its rotary position embedding.

``head(pool(blocks(embed(x))))`` with ``block(x, **block_state(model, x))`` is bit-identical to ``model(x)``:
the arithmetic is timm 1.0's (``Eva.forward_features`` / ``forward_head``, ``EvaBlock.forward``,
``EvaAttention.forward``). Every block call takes the rotary embedding of the current tokens as ``rope`` —
:func:`block_state` returns it, the runtime passes it on (``vitkit.adapters.runtime.HostRun``).

**RoPE after token merging.** EVA-02 rotates q and k of each patch token by angles ``θ·p`` of its 2-D grid
coordinate ``p`` (Su et al., RoFormer, 2021, §3.4.2 Eq. 34: ``x·cos(θp) + rot(x)·sin(θp)`` on interleaved pairs;
one half of the frequencies per grid axis — the axial 2-D form of Heo et al., "Rotary Position Embedding for Vision
Transformer", ECCV 2024). When tokens merge (ToMe, Bolya et al. 2023) vitkit keeps one coordinate per token:
a merged token sits at the *size-weighted mean* of its source coordinates (the same weights ToMe's §3 uses to
average the token features, so a token standing for s patches sits at their centroid), and its sin/cos are
computed at that — generally fractional — coordinate (:func:`rope_at`). The coordinates tracked are the RoPE grid
coordinates themselves (timm's ``_build_grid``: patch index, offset and ``ref_feat_shape`` rescale), an affine
function of the patch row/column, so their weighted mean is the coordinate of the weighted-mean patch position.
Prefix tokens (cls, registers) carry no rotation, as in timm.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers.pos_embed_sincos import _build_grid, apply_rot_embed_cat
from timm.models.eva import EvaAttention

from ..errors import UnsupportedModelError
from .protocol import register_explicit_attention
from .runtime import additive_mask, attend, attention_probs, head_mean


def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Images ``[B, C, H, W]`` → tokens ``[B, N, D]``: patch embedding, prefix tokens, absolute positions, pre-norm
    (the rotary embedding goes to the blocks: :func:`block_state`)."""
    x = model.patch_embed(x)
    x, _ = model._pos_embed(x)
    return model.norm_pre(x)


def token_positions(model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """RoPE grid coordinates of the patch tokens entering the first block, ``[1, T, 2]`` float32 (None without
    RoPE): exactly the coordinates timm's cached embedding was computed at."""
    rope = model.rope
    if rope is None:
        return None
    grid = _build_grid(
        list(rope.feat_shape),
        grid_type=rope.grid_type,
        ref_feat_shape=rope.ref_feat_shape,
        grid_offset=rope.grid_offset,
        grid_indexing=rope.grid_indexing,
        normalize_coords=rope.normalize_coords,
        device=rope.bands.device,
    )  # [h, w, 2]
    return grid.reshape(1, -1, grid.shape[-1])  # [1, T, 2]


def rope_at(rope: nn.Module, coords: torch.Tensor) -> torch.Tensor:
    """timm's concatenated ``[sin, cos]`` rotary embedding at arbitrary (fractional) grid coordinates.

    ``coords`` ``[B, T, 2]`` → ``[B, 1, T, 2·dim]`` (the head axis broadcasts). The same arithmetic as timm's
    ``build_fourier_pos_embed`` + ``_rope_layout`` (angle = coordinate × band, axial RoPE), so at the
    embedded grid it reproduces ``rope.get_embed()`` bit for bit."""
    angles = (coords.to(torch.float32).unsqueeze(-1) * rope.bands).flatten(-2)  # [B, T, dim/2]
    sin_cos = torch.stack([angles.sin(), angles.cos()], dim=-2)  # [B, T, 2, dim/2]
    # each frequency twice: [f0 … fk, f0 … fk] (rotate_half) or [f0, f0, f1, f1, …] (repeat_interleave's layout);
    # stack keeps ONNX shape inference ranked
    twice = torch.stack([sin_cos, sin_cos], dim=-2 if rope.rotate_half else -1)  # [B, T, 2, (2,) dim/2 (, 2)]
    return twice.flatten(-3).unsqueeze(1)  # [B, 1, T, 2·dim]: [sin, cos]


def block_state(model: nn.Module, x: torch.Tensor, positions: torch.Tensor | None = None) -> dict:
    """The keyword arguments every block call takes: ``{"rope": [1|B, 1, T, 2·dim]}`` (``{}`` without RoPE) — timm's
    cached embedding for the embedded grid, or :func:`rope_at` the tracked ``positions`` ``[B, T, 2]``."""
    rope = model.rope
    if rope is None:
        return {}
    if positions is None:
        return {"rope": rope.get_embed()[None, None]}  # [1, 1, T, 2·dim]
    return {"rope": rope_at(rope, positions)}


def pool(model: nn.Module, tokens: torch.Tensor, *, size: torch.Tensor | None = None) -> torch.Tensor:
    """Final norm, the model's pooling (average pooling weighted by token ``size`` ``[B, N, 1]`` after merging),
    ``fc_norm`` → ``[B, D]``."""
    x = model.norm(tokens)
    if size is None or model.global_pool != "avg":
        x = model.pool(x)
    else:
        P = model.num_prefix_tokens
        w = size[:, P:]  # [B, T, 1]
        x = (x[:, P:] * w).sum(dim=1) / w.sum(dim=1)  # [B, D]
    return model.fc_norm(x)


def _qkv(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """EvaAttention's qkv projection with its separate q/v biases, exactly as timm computes it (separate q/k/v
    projections: their outputs side by side, ``[B, N, 3·H·d]``)."""
    if attn.qkv is None:
        return torch.cat([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], dim=-1)
    if attn.q_bias is None:
        return attn.qkv(x)
    qkv_bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
    if attn.qkv_bias_separate:
        return attn.qkv(x) + qkv_bias
    return F.linear(x, weight=attn.qkv.weight, bias=qkv_bias)


def _rotate(attn: nn.Module, t: torch.Tensor, rope: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """RoPE on the patch tokens of ``t`` ``[B, H, N, d]`` (prefix tokens unrotated), as ``EvaAttention`` does."""
    if rope is None:
        return t
    npt = attn.num_prefix_tokens
    half = getattr(attn, "rotate_half", False)
    return torch.cat([t[:, :, :npt, :], apply_rot_embed_cat(t[:, :, npt:, :], rope, half=half)], dim=2).type_as(like)


def split_heads(attn: nn.Module, qkv_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, N, _ = qkv_out.shape
    qkv = qkv_out.reshape(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)  # [3, B, H, N, d]
    q, k, v = qkv.unbind(0)  # [B, H, N, d] each
    return attn.q_norm(q), attn.k_norm(k), v


def attention_with_extras(
    attn: nn.Module,
    x: torch.Tensor,
    rope: torch.Tensor | None,
    bias: torch.Tensor | None,
    is_causal: bool,
    needs: frozenset[str],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``EvaAttention.forward`` (same numerics; any head count) plus what token reduction reads.

    extras: ``metric`` ``[B, N, d]`` — the keys after ``k_norm`` and *before* RoPE, mean over heads (ToMe §3 matches
    on keys; before the rotation two patches of equal content are equally similar wherever they are, and the
    merged token's position is tracked separately); ``cls_attn`` / ``global_attn`` ``[B, N]`` — from the rotated
    q/k the attention really uses (EViT Eq. 4, HiPrune). ``bias``: additive attention bias (proportional
    attention, the caller's mask) passed to the fused kernel with ``scale=``."""
    B, N, _ = x.shape
    if callable(getattr(attn, "forward_and_qkv", None)):  # explicit twin (quantized): its numerics, its qkv output
        own_out, qkv_out = attn.forward_and_qkv(x, rope=rope, attn_mask=additive_mask(bias, is_causal, N, x))
    elif isinstance(attn, EvaAttention) and type(attn).forward in (EvaAttention.forward, eva_attention_forward):
        own_out, qkv_out = None, _qkv(attn, x)
    else:
        raise UnsupportedModelError(f"token reduction cannot read the attention of a {type(attn).__name__}")
    q, k, v = split_heads(attn, qkv_out)
    extras: dict[str, torch.Tensor] = {}
    if "metric" in needs:
        extras["metric"] = head_mean(k)  # [B, N, d]
    q, k = _rotate(attn, q, rope, v), _rotate(attn, k, rope, v)
    extras.update(attention_probs(attn, q, k, bias, is_causal, needs))
    if own_out is not None:
        return own_out, extras
    return _finish(attn, q, k, v, bias, is_causal), extras


def _finish(attn: nn.Module, q, k, v, bias: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
    """``softmax(q·kᵀ·scale + bias)·v`` → heads merged → scale norm → output projection (timm's order)."""
    B, _, N, _ = q.shape
    out = attend(attn, q, k, v, bias, is_causal)  # [B, H, N, d]
    out = attn.norm(out.transpose(1, 2).reshape(B, N, -1))  # [B, N, H·d]
    return attn.proj_drop(attn.proj(out))


def attention_residual(
    block: nn.Module,
    x: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    is_causal: bool = False,
    needs: frozenset[str] = frozenset(),
    rope: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``x + dp1(γ1·attn(norm1 x, rope))`` (``EvaBlock.forward``'s first half), with the extras ``needs`` names."""
    if not needs:
        y, extras = block.attn(block.norm1(x), rope=rope, attn_mask=bias), {}
    else:
        y, extras = attention_with_extras(block.attn, block.norm1(x), rope, bias, is_causal, needs)
    if block.gamma_1 is not None:
        y = block.gamma_1 * y
    return x + block.drop_path1(y), extras


def mlp_residual(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x + dp2(γ2·mlp(norm2 x))`` (``EvaBlock.forward``'s second half)."""
    y = block.mlp(block.norm2(x))
    if block.gamma_2 is not None:
        y = block.gamma_2 * y
    return x + block.drop_path2(y)


def eva_attention_forward(
    attn: nn.Module,
    x: torch.Tensor,
    rope: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """``EvaAttention.forward`` for any number of heads (timm's reshapes the heads back to the *input* width)."""
    q, k, v = split_heads(attn, _qkv(attn, x))
    q, k = _rotate(attn, q, rope, v), _rotate(attn, k, rope, v)
    return _finish(attn, q, k, v, attn_mask, is_causal)


class AttentionBranch(nn.Module):
    """``attn(norm1 x)`` of one block without RoPE: a module of the right cost for latency measurement only."""

    def __init__(self, norm: nn.Module, attn: nn.Module) -> None:
        super().__init__()
        self.norm, self.attn = norm, attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(self.norm(x))


def route_linears(model: nn.Module, names: Sequence[str]) -> None:
    """Make the attention call its ``qkv`` module when a method gives it extra computation (LoRA): timm's fused path
    ``F.linear(x, qkv.weight, q/k/v bias)`` reads the weight and would skip the module's forward. The switch is timm's
    own ``qkv_bias_separate`` path, ``qkv(x) + bias`` — the same sum, rounded once more."""
    wanted = set(names)
    for i, blk in enumerate(model.blocks):
        attn = blk.attn
        if f"blocks.{i}.attn.qkv" in wanted and isinstance(attn, EvaAttention) and attn.q_bias is not None:
            attn.qkv_bias_separate = True


@register_explicit_attention
class ExplicitEvaAttention(EvaAttention):
    """timm ``EvaAttention`` with explicit ``q·kᵀ`` and ``attn·v`` matmuls, each matmul input passed through
    :meth:`site` — ``"q"`` (after RoPE, scaled), ``"k"`` (after RoPE), ``"attn"`` (softmax map after dropout),
    ``"v"`` — and the heads' output through ``"out"``. The qkv projection is *called* (``qkv(x) + q/k/v bias``) so a
    quantized or adapted ``qkv`` module is seen (and a bias RepQ-ViT folds into it is added). Any head count."""

    host_class = EvaAttention

    def site(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        return self.forward_and_qkv(x, rope=rope, attn_mask=attn_mask, is_causal=is_causal)[0]

    def forward_and_qkv(
        self,
        x: torch.Tensor,
        rope: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(output, qkv projection output)`` (token reduction reads its metric from the second)."""
        B, N, _ = x.shape
        if self.qkv is None:  # separate projections: each module is called
            qkv_out = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)  # [B, N, 3·H·d]
        else:
            qkv_out = self.qkv(x)  # [B, N, 3·H·d]
        if self.q_bias is not None:
            qkv_out = qkv_out + torch.cat((self.q_bias, self.k_bias, self.v_bias))
        q, k, v = split_heads(self, qkv_out)  # [B, H, N, d] each
        q, k = _rotate(self, q, rope, v), _rotate(self, k, rope, v)
        q = self.site("q", q * self.scale)
        k = self.site("k", k)
        logits = q @ k.transpose(-2, -1)  # [B, H, N, N]
        if is_causal:
            logits = logits.masked_fill(logits.new_ones(N, N, dtype=torch.bool).triu(1), float("-inf"))
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
        elif attn_mask is not None:
            logits = logits + attn_mask
        attn = self.site("attn", self.attn_drop(logits.softmax(dim=-1)))  # [B, H, N, N]
        v = self.site("v", v)
        out = self.site("out", (attn @ v).transpose(1, 2).reshape(B, N, -1))  # [B, N, H·d]
        out = self.norm(out)
        return self.proj_drop(self.proj(out)), qkv_out
