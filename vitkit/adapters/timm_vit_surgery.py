"""Shape surgery on timm ``VisionTransformer`` blocks: remove whole heads, MLP neurons or whole blocks.

MLP neurons of every MLP kind (:mod:`.timm_mlp`): a GLU neuron's gate and value rows go as a pair.

Only this module (with ``timm_vit``) touches timm internals. Every function slices real weights, so pruning a
head is exactly the model with that head's ``proj`` input columns zeroed, and pruning nothing is the identity.

Bookkeeping after head removal (timm 1.0.x ``Attention``): ``num_heads`` and ``attn_dim`` (used by the output
reshape) change; ``head_dim`` and ``scale`` do not — whole-head pruning keeps ``d``, so the fused
``scaled_dot_product_attention`` default scale ``1/sqrt(d)`` still equals ``attn.scale`` (checked).

Head-*dim* pruning (:func:`prune_head_dims`) changes ``d`` → ``d′``: fused SDPA would silently switch to
``1/sqrt(d′)``. Instead of patching timm's forward to pass ``scale=`` we fold the original temperature into
the weights: q rows (or, with qk-norm, the q-norm affine) are multiplied by ``sqrt(d′/d)`` and ``attn.scale``
is set to ``1/sqrt(d′)``, so the fused and the manual path both compute ``q·k/sqrt(d)`` exactly as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..errors import UnsupportedModelError
from ..ops.pruning import head_cols, head_dim_cols, head_dim_rows, qkv_rows
from . import timm_mlp
from .slicing import _check_kept, slice_linear  # noqa: F401  (re-exported: other adapters import them from here)
from .timm_vit import block_parts, describe


def check_prunable(model: nn.Module, groups: Sequence[str]) -> None:
    """Raise :class:`UnsupportedModelError` naming the feature if ``groups`` cannot be pruned exactly."""
    describe(model)  # refuses, by name, a model the adapter does not handle
    for i, blk in enumerate(model.blocks):
        parts = block_parts(blk, index=i)
        attn, mlp = parts.attn, parts.mlp
        for name, lin in (("attn.qkv", attn.qkv), ("attn.proj", attn.proj)):
            if isinstance(lin, nn.Linear) and type(lin) is not nn.Linear:  # LoRA / fake-quant subclasses
                raise UnsupportedModelError(
                    f"blocks.{i}.{name} is a {type(lin).__name__}: slicing it would drop its extra branch; "
                    "prune before adapting, or fold it first (lora_merge step / vitkit.merge_back)"
                )
        timm_mlp.check_mlp_linears(mlp, f"blocks.{i}.mlp")
        if "heads" in groups:
            if not isinstance(attn.norm, nn.Identity):
                raise UnsupportedModelError(
                    f"blocks.{i}.attn has scale_norm (a norm over all heads): head pruning would change its "
                    "statistics; prune groups=('mlp',) only"
                )
            if not isinstance(attn.qkv, nn.Linear):
                raise UnsupportedModelError(f"blocks.{i}.attn.qkv is not a fused Linear; cannot prune heads")
        if "mlp" in groups:
            if not isinstance(timm_mlp.hidden_norm(mlp), nn.Identity):
                raise UnsupportedModelError(
                    f"blocks.{i}.mlp has a hidden norm (scale_mlp_norm): neuron pruning would change its "
                    "statistics; prune groups=('heads',) only"
                )


def prune_heads(block: nn.Module, keep: Sequence[int], *, index: int | None = None) -> None:
    """Keep only heads ``keep`` of ``block.attn``: slice qkv rows, gate rows and proj columns; update counts."""
    attn = block_parts(block, index=index).attn
    keep = sorted(int(k) for k in keep)
    h, d = int(attn.num_heads), int(attn.head_dim)
    where = f"blocks.{index}" if index is not None else "block"
    _check_kept(keep, h, where, "heads", "cannot remove every head of a block; remove the block instead")
    if len(keep) == h:
        return
    rows = qkv_rows(h, d, keep).to(attn.qkv.weight.device)  # [3·K·d]
    cols = head_cols(d, keep).to(attn.qkv.weight.device)  # [K·d]
    attn.qkv = slice_linear(attn.qkv, rows=rows)
    attn.proj = slice_linear(attn.proj, cols=cols)
    if getattr(attn, "gate", None) is not None:
        attn.gate = slice_linear(attn.gate, rows=cols)
    attn.num_heads = len(keep)
    attn.attn_dim = len(keep) * d
    if abs(float(attn.scale) - d**-0.5) > 1e-12:  # SDPA's default scale must still equal attn.scale
        raise UnsupportedModelError(f"{where}.attn.scale={attn.scale} differs from 1/sqrt(head_dim={d})")


def prune_head_dims(block: nn.Module, keep_dims: Sequence[int], *, index: int | None = None) -> None:
    """Keep dims ``keep_dims`` of every head (q, k and v alike): qkv rows, proj columns, q/k-norm slices.

    The softmax temperature ``1/sqrt(d)`` of the unpruned head is kept by folding ``sqrt(d′/d)`` into q (see
    the module docstring), so zeroing a dim's q/k/v rows and proj columns equals removing it.
    """
    attn = block_parts(block, index=index).attn
    keep = sorted(int(k) for k in keep_dims)
    h, d = int(attn.num_heads), int(attn.head_dim)
    where = f"blocks.{index}" if index is not None else "block"
    _check_kept(keep, d, where, "head dims", "cannot remove every dim of the heads; remove the heads instead")
    if len(keep) == d:
        return
    if not isinstance(attn.norm, nn.Identity) or getattr(attn, "gate", None) is not None:
        raise UnsupportedModelError(f"{where}.attn has scale_norm or a gate: head-dim pruning is not supported")
    scale_now = float(attn.scale)
    rows = head_dim_rows(h, d, keep).to(attn.qkv.weight.device)  # [3·H·d′]
    cols = head_dim_cols(h, d, keep).to(attn.qkv.weight.device)  # [H·d′]
    attn.qkv = slice_linear(attn.qkv, rows=rows)
    attn.proj = slice_linear(attn.proj, cols=cols)
    d_new = len(keep)
    fold = scale_now * d_new**0.5  # SDPA will use 1/sqrt(d′); q·fold restores the old temperature
    idx = torch.as_tensor(keep, dtype=torch.long)
    with torch.no_grad():
        for name in ("q_norm", "k_norm"):
            norm = getattr(attn, name)
            if hasattr(norm, "normalized_shape"):  # LayerNorm / RMSNorm over head_dim: slice its affine
                for pname in ("weight", "bias"):
                    p = getattr(norm, pname, None)
                    if p is not None:
                        setattr(norm, pname, nn.Parameter(p.detach()[idx].clone(), requires_grad=p.requires_grad))
                norm.normalized_shape = (d_new,)
        qn = attn.q_norm
        if isinstance(qn, nn.Identity):
            n_q = h * d_new
            attn.qkv.weight[:n_q].mul_(fold)
            if attn.qkv.bias is not None:
                attn.qkv.bias[:n_q].mul_(fold)
        else:
            if getattr(qn, "weight", None) is None:
                raise UnsupportedModelError(f"{where}.attn.q_norm has no affine weight to fold the scale into")
            qn.weight.mul_(fold)
            if getattr(qn, "bias", None) is not None:
                qn.bias.mul_(fold)
    attn.head_dim = d_new
    attn.attn_dim = h * d_new
    attn.scale = d_new**-0.5


def prune_mlp(block: nn.Module, keep: Sequence[int], *, index: int | None = None) -> None:
    """Keep only hidden neurons ``keep`` of ``block.mlp``: fc1 rows (+ bias) and fc2 columns; a GLU's gate and value
    rows as a pair (:func:`.timm_mlp.prune_mlp`)."""
    where = f"blocks.{index}" if index is not None else "block"
    timm_mlp.prune_mlp(block_parts(block, index=index).mlp, keep, where=where)


def keep_blocks(model: nn.Module, keep: Sequence[int]) -> None:
    """Keep only blocks ``keep`` (original order); the rest of the residual stream is untouched."""
    keep = sorted(int(k) for k in keep)
    depth = len(model.blocks)
    if not keep or keep[0] < 0 or keep[-1] >= depth:
        raise UnsupportedModelError(f"kept blocks {keep} must be a non-empty subset of 0..{depth - 1}")
    if len(keep) == depth:
        return
    model.blocks = nn.Sequential(*[model.blocks[i] for i in keep])
    if hasattr(model, "depth"):
        model.depth = len(keep)
