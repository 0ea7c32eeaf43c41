"""Shape surgery on timm ``SwinTransformer`` blocks: remove whole heads, MLP neurons or whole blocks, exactly.

A Swin head owns its ``3·d`` qkv rows (+ bias), its ``d`` proj columns **and its column of the
relative-position-bias table** ``[(2·Wh−1)(2·Ww−1), H]`` (Swin §3.2: one bias per head and relative offset);
removing a head removes all three, so a pruned model equals the dense one with that head's proj columns zeroed.
``WindowAttention`` keeps no ``head_dim``: its forward reshapes ``qkv`` with ``-1``, so only ``num_heads``
changes, and the head size (hence ``scale`` = 1/√d, which the fused kernel also uses) is kept.

Removing whole blocks keeps each remaining block's own window, shift and mask, so the remaining blocks compute
what they did; a stage may lose all its blocks (its patch merging stays).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..errors import UnsupportedModelError
from ..ops.pruning import head_cols, qkv_rows
from .timm_swin import block_parts, describe, head_dim, stage_blocks
from .timm_vit_surgery import _check_kept, slice_linear


def check_prunable(model: nn.Module, groups: Sequence[str]) -> None:
    """Raise :class:`UnsupportedModelError` naming the layer when ``groups`` cannot be pruned exactly (the model
    is checked by :func:`~.timm_swin.describe` first; adapted linears must be folded before pruning)."""
    describe(model)
    for name, blk, _ in stage_blocks(model):
        p = block_parts(blk, where=name)
        for sub, lin in (
            ("attn.qkv", p.attn.qkv),
            ("attn.proj", p.attn.proj),
            ("mlp.fc1", p.mlp.fc1),
            ("mlp.fc2", p.mlp.fc2),
        ):
            if type(lin) is not nn.Linear:  # LoRA / fake-quant subclasses
                raise UnsupportedModelError(
                    f"{name}.{sub} is a {type(lin).__name__}: slicing it would drop its extra branch; "
                    "prune before adapting, or fold it first (lora_merge step / vitkit.merge_back)"
                )


def prune_heads(block: nn.Module, keep: Sequence[int], *, index: int | None = None) -> None:
    """Keep only heads ``keep``: qkv rows, proj columns and relative-position-bias table columns."""
    attn = block_parts(block, index=index).attn
    keep = sorted(int(k) for k in keep)
    h, d = int(attn.num_heads), head_dim(attn)
    where = f"block {index}" if index is not None else "block"
    _check_kept(keep, h, where, "heads", "cannot remove every head of a block; remove the block instead")
    if len(keep) == h:
        return
    dev = attn.qkv.weight.device
    attn.qkv = slice_linear(attn.qkv, rows=qkv_rows(h, d, keep).to(dev))  # [3·K·d, C]
    attn.proj = slice_linear(attn.proj, cols=head_cols(d, keep).to(dev))  # [C, K·d]
    table = attn.relative_position_bias_table  # [(2Wh−1)(2Ww−1), H]
    idx = torch.as_tensor(keep, dtype=torch.long, device=table.device)
    attn.relative_position_bias_table = nn.Parameter(
        table.detach().index_select(1, idx).clone(), requires_grad=table.requires_grad
    )
    attn.num_heads = len(keep)


def prune_mlp(block: nn.Module, keep: Sequence[int], *, index: int | None = None) -> None:
    """Keep only hidden neurons ``keep``: fc1 rows (+ bias) and fc2 columns."""
    mlp = block_parts(block, index=index).mlp
    keep = sorted(int(k) for k in keep)
    n = int(mlp.fc1.out_features)
    where = f"block {index}" if index is not None else "block"
    _check_kept(keep, n, where, "neurons", "cannot remove every MLP neuron; remove the block instead")
    if len(keep) == n:
        return
    idx = torch.as_tensor(keep, dtype=torch.long, device=mlp.fc1.weight.device)
    mlp.fc1 = slice_linear(mlp.fc1, rows=idx)
    mlp.fc2 = slice_linear(mlp.fc2, cols=idx)


def keep_blocks(model: nn.Module, keep: Sequence[int]) -> None:
    """Keep only blocks ``keep`` (indices in forward order over all stages)."""
    keep = sorted(int(k) for k in keep)
    blocks = stage_blocks(model)
    if not keep or keep[0] < 0 or keep[-1] >= len(blocks) or len(set(keep)) != len(keep):
        raise UnsupportedModelError(f"kept blocks {keep} must be a non-empty subset of 0..{len(blocks) - 1}")
    if len(keep) == len(blocks):
        return
    kept = set(keep)
    for s, stage in enumerate(model.layers):
        stage.blocks = nn.Sequential(*[blk for i, (_, blk, st) in enumerate(blocks) if st == s and i in kept])
        stage.depth = len(stage.blocks)


def set_mlp_widths(model: nn.Module, widths: Sequence[int]) -> None:
    """Resize block ``i``'s MLP hidden layer to ``widths[i]`` neurons (shapes only; load weights afterwards)."""
    for i, (name, blk, _) in enumerate(stage_blocks(model)):
        mlp = block_parts(blk, where=name).mlp
        width = int(widths[i])
        if mlp.fc1.out_features != width:
            idx = torch.arange(width) % mlp.fc1.out_features
            mlp.fc1 = slice_linear(mlp.fc1, rows=idx)
            mlp.fc2 = slice_linear(mlp.fc2, cols=idx)
