"""The layers of a timm ``SwinTransformer`` by role, its explicit window attention, and its forward split.

* :func:`linear_roles` / :func:`norm_linear_pairs` / :func:`attention_cores` — what quantization and RepQ-ViT's
  reparameterization act on (the block linears, the patch-merging reductions between stages, ``norm1 → qkv``,
  ``norm2 → fc1`` and patch merging's ``norm → reduction``, each ``WindowAttention``);
* :class:`ExplicitWindowAttention` — ``WindowAttention`` with both matmuls written out, the relative-position bias
  and the shifted-window mask added to the logits, and a ``site`` hook at each matmul input (what fake
  quantization, e.g. RepQ-ViT's log√2 post-softmax quantizer, attaches to);
* :func:`embed` / :func:`pool` / :func:`head` — timm's ``forward_features`` / ``forward_head`` split;
* :func:`key_roles` — state-dict keys by role (what merging reads).

Names are module names relative to the model (as ``model.named_modules()`` gives them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import ClassVar

import torch
import torch.nn as nn
from timm.models.swin_transformer import WindowAttention

from ..errors import UnsupportedModelError
from .protocol import AttentionCore, KeyRole, LinearRole, NormLinear, register_explicit_attention
from .timm_swin import block_parts, describe, refuse, stage_blocks
from .timm_vit_layers import OuterLayers

#: (role, parent in the block, attribute) of each block Linear, in forward order
_BLOCK_LINEARS = (
    ("qkv", "attn", "qkv"),
    ("attn_out", "attn", "proj"),
    ("mlp_in", "mlp", "fc1"),
    ("mlp_out", "mlp", "fc2"),
)


def linear_roles(model: nn.Module) -> dict[str, LinearRole]:
    """``{name: LinearRole}`` in forward order: each patch merging's ``reduction`` (role ``downsample``) before its
    stage's blocks, per block qkv, attn_out, mlp_in, mlp_out, then ``head.fc``."""
    describe(model)
    roles: dict[str, LinearRole] = {}
    i = 0  # block index in forward order over all stages
    for s, stage in enumerate(model.layers):
        if (down := _reduction(model, s)) is not None:
            roles[down] = LinearRole(down, "downsample", None, "reduction")
        for j in range(len(stage.blocks)):
            for role, parent, attr in _BLOCK_LINEARS:
                full = f"layers.{s}.blocks.{j}.{parent}.{attr}"
                roles[full] = LinearRole(full, role, i, attr)
            i += 1
    if isinstance(model.head.fc, nn.Linear):
        roles["head.fc"] = LinearRole("head.fc", "head", None, "head")
    return roles


def _reduction(model: nn.Module, stage: int) -> str | None:
    """The name of stage ``stage``'s patch-merging reduction, None without patch merging."""
    return f"layers.{stage}.downsample.reduction" if hasattr(model.layers[stage].downsample, "reduction") else None


def norm_linear_pairs(model: nn.Module) -> list[NormLinear]:
    """In forward order: each patch merging's ``norm → reduction`` (role ``downsample``), per block ``norm1 → qkv``
    (role ``attn``: the window partition between them only moves tokens, so a per-channel scale folds through it)
    and ``norm2 → fc1`` (role ``mlp``)."""
    pairs = []
    for s in range(len(model.layers)):
        if (down := _reduction(model, s)) is not None:
            pairs.append(NormLinear(f"layers.{s}.downsample.norm", (down,), "downsample"))
        for j in range(len(model.layers[s].blocks)):
            name = f"layers.{s}.blocks.{j}"
            pairs.append(NormLinear(f"{name}.norm1", (f"{name}.attn.qkv",), "attn"))
            pairs.append(NormLinear(f"{name}.norm2", (f"{name}.mlp.fc1",), "mlp"))
    return pairs


def attention_cores(model: nn.Module) -> list[AttentionCore]:
    """Each block's ``WindowAttention``, with heads, head size and logit scale."""
    info = describe(model)
    return [
        AttentionCore(f"{name}.attn", i, info.num_heads[i], info.head_dim[i], float(blk.attn.scale))
        for i, (name, blk, _) in enumerate(stage_blocks(model))
    ]


def outer_layers(model: nn.Module) -> OuterLayers:
    """The patch projection (+ its norm as the pre-norm), no prefix tokens or positions, the final norm."""
    return OuterLayers(
        patch_proj_name="patch_embed.proj",
        patch_proj=model.patch_embed.proj,
        prefix_tokens=(),
        positions=None,
        pre_norm=model.patch_embed.norm,
        final_norm=model.norm,
        pool_norm=nn.Identity(),
    )


@register_explicit_attention
class ExplicitWindowAttention(WindowAttention):
    """timm ``WindowAttention`` with explicit ``q·kᵀ`` and ``attn·v`` matmuls (no fused SDPA kernel) — Swin §3.2,
    eq. 4, ``softmax(QKᵀ/√d + B + M)V`` with ``B`` the relative-position bias and ``M`` the shifted-window mask
    (0 / −100) — each matmul input passed through :meth:`site`: ``"q"`` (already scaled), ``"k"``, ``"attn"`` (the
    softmax map after dropout), ``"v"``, and the heads' output before the projection as ``"out"``. The base hook
    returns its input; subclasses (fake quantization) override it. Swapped in by ``__class__``."""

    #: the host class this explicit twin replaces
    host_class: ClassVar[type] = WindowAttention

    def site(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, _ = x.shape  # B_ = windows × batch, N = window area
        H = self.num_heads
        qkv = self.qkv(x).reshape(B_, N, 3, H, -1).permute(2, 0, 3, 1, 4)  # [3, B_, H, N, d]
        q, k, v = qkv.unbind(0)  # [B_, H, N, d] each
        q = self.site("q", q * self.scale)
        k = self.site("k", k)
        logits = q @ k.transpose(-2, -1) + self._get_rel_pos_bias()  # [B_, H, N, N] + [1, H, N, N]
        if mask is not None:  # mask [nW, N, N]: windows are batch-major in B_
            nw = mask.shape[0]
            logits = (logits.view(-1, nw, H, N, N) + mask.unsqueeze(1).unsqueeze(0)).view(-1, H, N, N)
        attn = self.site("attn", self.attn_drop(logits.softmax(dim=-1)))  # [B_, H, N, N]
        v = self.site("v", v)
        out = self.site("out", (attn @ v).transpose(1, 2).reshape(B_, N, -1))  # [B_, N, H·d]
        return self.proj_drop(self.proj(out))


# -- the forward split ------------------------------------------------------------------------------------------
def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Images ``[B, C, H, W]`` → the first stage's input ``[B, h, w, C]`` (patch projection + its norm)."""
    return model.patch_embed(x)


def final_norm(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The last stage's output ``[B, h, w, C]`` → final token features (``forward_features``)."""
    return model.norm(tokens)


def pool(model: nn.Module, tokens: torch.Tensor, *, size: torch.Tensor | None = None) -> torch.Tensor:
    """The last stage's output → pooled features ``[B, C]``: final norm, the head's average pooling."""
    if size is not None:
        raise refuse(model, "size-weighted pooling (token merging)", "merged")
    return model.head.global_pool(model.norm(tokens))


def head(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Pooled features → logits: head dropout, classifier (timm's ``ClassifierHead`` after its pooling)."""
    h = model.head
    return h.flatten(h.fc(h.drop(features)))


def feature_norm(model: nn.Module) -> nn.Module:
    return model.norm


class WindowAttentionBranch(nn.Module):
    """A Swin block's attention residual branch as a module sharing its weights: ``norm1`` → shift → window
    partition → ``WindowAttention`` → merge → unshift, on ``[B, H, W, C]`` (no drop path or residual add)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block._attn(self.block.norm1(x))


def residual_branches(block: nn.Module, *, index: int | None = None) -> tuple[nn.Module, nn.Module]:
    """The attention and MLP residual branches (``[B, H, W, C]`` in and out)."""
    p = block_parts(block, index=index)
    return WindowAttentionBranch(block), nn.Sequential(p.norm2, p.mlp)


def attention_residual(block: nn.Module, x: torch.Tensor, *, bias=None, is_causal=False, needs=frozenset()):
    """``x + dp1(attention branch)`` on ``[B, H, W, C]``; an attention bias, causal flag or extras (what token
    reduction reads) have no meaning inside fixed windows and are refused."""
    if bias is not None or is_causal or needs:
        raise UnsupportedModelError(
            "SwinTransformer runs windowed attention on a fixed token grid: an attention bias, causal mask or "
            f"token-reduction extras {sorted(needs)} do not apply"
        )
    return x + block.drop_path1(block._attn(block.norm1(x))), {}


def mlp_residual(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x + dp2(mlp(norm2 x))`` (token-wise: any leading shape)."""
    return x + block.drop_path2(block.mlp(block.norm2(x)))


# -- state-dict keys -----------------------------------------------------------------------------------------------
_BLOCK = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.(.+)$")
_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.(.+)$")
_BLOCK_KEYS: dict[str, tuple[str, str]] = {
    "norm1.weight": ("norm1", "weight"),
    "norm1.bias": ("norm1", "bias"),
    "attn.qkv.weight": ("qkv", "weight"),
    "attn.qkv.bias": ("qkv", "bias"),
    "attn.relative_position_bias_table": ("rel_pos_bias", "param"),
    "attn.proj.weight": ("attn_out", "weight"),
    "attn.proj.bias": ("attn_out", "bias"),
    "norm2.weight": ("norm2", "weight"),
    "norm2.bias": ("norm2", "bias"),
    "mlp.fc1.weight": ("mlp_in", "weight"),
    "mlp.fc1.bias": ("mlp_in", "bias"),
    "mlp.fc2.weight": ("mlp_out", "weight"),
    "mlp.fc2.bias": ("mlp_out", "bias"),
}
_TOP_KEYS: dict[str, tuple[str, str]] = {
    "patch_embed.proj.weight": ("embed", "weight"),
    "patch_embed.proj.bias": ("embed", "bias"),
    "patch_embed.norm.weight": ("embed_norm", "weight"),
    "patch_embed.norm.bias": ("embed_norm", "bias"),
    "norm.weight": ("final_norm", "weight"),
    "norm.bias": ("final_norm", "bias"),
    "head.fc.weight": ("head", "weight"),
    "head.fc.bias": ("head", "bias"),
}
_DOWNSAMPLE_KEYS = {"norm.weight": "weight", "norm.bias": "bias", "reduction.weight": "weight"}


def key_role(key: str, block_index: Mapping[tuple[int, int], int]) -> KeyRole:
    """The :class:`KeyRole` of one key; ``block_index[(stage, j)]`` is the block's index in forward order."""
    module = key.rsplit(".", 1)[0] if "." in key else ""
    tensor = key.rsplit(".", 1)[-1] if key.rsplit(".", 1)[-1] in ("weight", "bias") else "param"
    if m := _BLOCK.match(key):
        part, tensor = _BLOCK_KEYS.get(m.group(3), ("other", tensor))
        return KeyRole(key, block_index.get((int(m.group(1)), int(m.group(2)))), part, tensor, {"module": module})
    if (m := _DOWNSAMPLE.match(key)) and m.group(2) in _DOWNSAMPLE_KEYS:
        return KeyRole(key, None, "downsample", _DOWNSAMPLE_KEYS[m.group(2)], {"module": module})
    part, tensor = _TOP_KEYS.get(key, ("other", tensor))
    return KeyRole(key, None, part, tensor, {"module": module})


def key_roles(state_dict: Mapping[str, torch.Tensor] | Iterable[str]) -> dict[str, KeyRole]:
    """The role of every key (part ``"other"`` when not recognised); blocks are numbered in forward order."""
    keys = list(state_dict)
    found = sorted({(int(m.group(1)), int(m.group(2))) for k in keys if (m := _BLOCK.match(k))})
    index = {sj: i for i, sj in enumerate(found)}
    return {k: key_role(k, index) for k in keys}


def permutation_axes(roles: Mapping[str, KeyRole]) -> dict:
    """Unit permutations are not defined here: the residual width changes at every patch merging (which mixes
    four neighbours' channels), so no single residual permutation exists."""
    raise UnsupportedModelError(
        "no known permutation symmetry for a Swin state dict: the residual stream changes width at each patch "
        "merging, so permutation-based merging (PLeaS) does not apply; use average, task_arithmetic, ties or dare"
    )


def block_layers(block: nn.Module, *, index: int | None = None):
    """Refused: converters that rebuild a whole block (the integer-only path) rebuild plain global-attention
    blocks; a Swin block's window partition, shift and relative-position bias are not part of them."""
    raise UnsupportedModelError(
        "the integer-only block converter rebuilds plain ViT blocks, not Swin's windowed blocks (shift, window "
        "partition, relative-position bias): deploy a Swin with runtime 'torch-w8a8' or 'ort-int8'"
    )
