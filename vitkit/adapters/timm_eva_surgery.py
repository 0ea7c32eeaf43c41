"""Shape surgery on timm ``Eva`` blocks: remove attention heads, SwiGLU neurons or whole blocks, exactly.

* **Heads** — the fused ``qkv`` rows of the kept heads (or the rows of ``q_proj`` / ``k_proj`` / ``v_proj``),
  the matching slices of the separate ``q_bias`` /
  ``v_bias`` (and the zero ``k_bias`` buffer), the ``proj`` input columns. RoPE rotates each head's dims alike, so
  it is unchanged; ``head_dim`` and ``scale`` are kept. timm's ``EvaAttention.forward`` reshapes the heads back to
  the *input* width, so a pruned core takes the class :class:`PrunedEvaAttention` (same forward, any head count;
  weights and state-dict keys unchanged). Removing a head equals zeroing its ``proj`` columns.
* **MLP neurons** — a SwiGLU neuron ``j`` computes ``silu(g_j·x) · (v_j·x)`` (Shazeer, "GLU Variants Improve
  Transformer", 2020, Eq. 6): its gate row and its value row go together — ``fc1_g`` and ``fc1_x`` rows ``j`` in
  the split ``SwiGLU``, rows ``j`` and ``H + j`` of the packed ``GluMlp``'s ``fc1`` — with ``fc2`` column ``j``, and
  the hidden ``norm``'s affine entry ``j`` when the MLP has one (:func:`.timm_mlp.prune_mlp`, shared with the plain
  ViT). Without a hidden norm, removing a neuron equals zeroing its rows (``silu(0)·0 = 0``); with one, the norm's
  statistics are then taken over the kept neurons.
* **Blocks** — the kept blocks, in order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from timm.models.eva import EvaAttention

from ..errors import UnsupportedModelError
from ..ops.pruning import head_cols, qkv_rows
from ..patching import mixin_class
from . import timm_mlp
from .timm_vit_surgery import _check_kept, slice_linear


class PrunedEvaAttention(EvaAttention):
    """``EvaAttention`` after head pruning: the same computation, with the heads' output reshaped to ``H·d`` (not
    to the input width, as timm's forward does)."""

    def forward(self, x, rope=None, attn_mask=None, is_causal=False):
        from .timm_eva_forward import eva_attention_forward

        return eva_attention_forward(self, x, rope, attn_mask, is_causal)


def check_prunable(model: nn.Module, groups: Sequence[str]) -> None:
    """Refuse, naming the module, what cannot be pruned exactly."""
    for i, blk in enumerate(model.blocks):
        attn, mlp = blk.attn, blk.mlp
        timm_mlp.check_mlp_linears(mlp, f"blocks.{i}.mlp")
        lins = [(f"attn.{n}", getattr(attn, n, None)) for n in ("qkv", "q_proj", "k_proj", "v_proj", "proj")]
        for name, lin in lins:
            if isinstance(lin, nn.Linear) and type(lin) is not nn.Linear:
                raise UnsupportedModelError(
                    f"blocks.{i}.{name} is a {type(lin).__name__}: slicing it would drop its extra branch; "
                    "prune before adapting, or fold it first (lora_merge step / vitkit.merge_back)"
                )
        if "heads" in groups:
            if not isinstance(attn.norm, nn.Identity):
                raise UnsupportedModelError(
                    f"blocks.{i}.attn has scale_norm (a norm over all heads): head pruning would change its "
                    "statistics; prune groups=('mlp',) only"
                )
            if type(attn) not in (EvaAttention, PrunedEvaAttention):
                raise UnsupportedModelError(f"blocks.{i}.attn is a {type(attn).__name__}: prune before quantizing")
            if abs(float(attn.scale) - int(attn.head_dim) ** -0.5) > 1e-12:
                raise UnsupportedModelError(f"blocks.{i}.attn.scale differs from 1/sqrt(head_dim)")


def _slice_param(module: nn.Module, name: str, idx: torch.Tensor) -> None:
    p = getattr(module, name, None)
    if p is None:
        return
    if isinstance(p, nn.Parameter):
        setattr(module, name, nn.Parameter(p.detach().index_select(0, idx).clone(), requires_grad=p.requires_grad))
    else:  # a buffer (EVA's zero k_bias)
        module.register_buffer(name, p.index_select(0, idx).clone(), persistent=False)


def prune_heads(attn: nn.Module, keep: Sequence[int], *, where: str) -> None:
    """Keep heads ``keep`` of an ``EvaAttention`` (see the module docstring)."""
    keep = sorted(int(k) for k in keep)
    h, d = int(attn.num_heads), int(attn.head_dim)
    _check_kept(keep, h, where, "heads", "cannot remove every head of a block; remove the block instead")
    if len(keep) == h:
        return
    dev = attn.proj.weight.device
    rows = qkv_rows(h, d, keep).to(dev)  # [3·K·d]
    cols = head_cols(d, keep).to(dev)  # [K·d]
    if attn.qkv is None:  # separate projections: the kept heads' rows of each
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(attn, name, slice_linear(getattr(attn, name), rows=cols))
    else:
        attn.qkv = slice_linear(attn.qkv, rows=rows)
    attn.proj = slice_linear(attn.proj, cols=cols)
    for name in ("q_bias", "k_bias", "v_bias"):
        _slice_param(attn, name, cols)
    attn.num_heads = len(keep)
    if type(attn) is EvaAttention:
        attn.__class__ = PrunedEvaAttention


def prune_mlp(mlp: nn.Module, keep: Sequence[int], *, where: str) -> None:
    """Keep hidden neurons ``keep``: gate and value rows as a pair, ``fc2`` columns, the hidden norm's entries."""
    timm_mlp.prune_mlp(mlp, keep, where=where)


def keep_blocks(model: nn.Module, keep: Sequence[int]) -> None:
    keep = sorted(int(k) for k in keep)
    depth = len(model.blocks)
    if not keep or keep[0] < 0 or keep[-1] >= depth:
        raise UnsupportedModelError(f"kept blocks {keep} must be a non-empty subset of 0..{depth - 1}")
    if len(keep) == depth:
        return
    model.blocks = nn.ModuleList([model.blocks[i] for i in keep])


def add_mlp_branch(model: nn.Module, block_name: str, mixin: type, modules: dict[str, nn.Module], **attrs) -> str:
    """Mix ``mixin`` into block ``block_name``'s MLP (AdaptFormer: a branch beside the MLP, reading ``norm2 x``)."""
    mlp = model.get_submodule(block_name).mlp
    ref = next(mlp.parameters())
    mlp.__class__ = mixin_class(mixin, type(mlp), mixin.__name__, module=__name__)
    for name, module in modules.items():
        setattr(mlp, name, module.to(ref.device, ref.dtype))
    for name, value in attrs.items():
        setattr(mlp, name, value)
    return f"{block_name}.mlp"
