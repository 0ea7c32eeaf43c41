"""Adapter facts for timm's ``SwinTransformer`` (Liu et al., ICCV 2021, "Swin Transformer: Hierarchical Vision
Transformer using Shifted Windows"): stages of pre-norm blocks whose attention runs inside fixed windows.

Like :mod:`.timm_vit` for the plain ViT, this is the only module (with the other ``timm_swin_*`` files) that
knows Swin's internals. :func:`describe` walks the whole model first and raises
:class:`~vitkit.errors.UnsupportedModelError` naming the first module it does not handle (a norm other than
``nn.LayerNorm``, an unknown block / attention / MLP / downsample class, a pooling other than ``avg``), so that
no method ever starts patching a model it would leave half-done.

A Swin block (timm 1.0 ``SwinTransformerBlock``) computes, on ``x`` ``[B, H, W, C]``,
``x + dp1(unshift(merge_windows(W-MSA(partition(shift(norm1 x))))))`` then ``x + dp2(mlp(norm2 x))``: the
residual structure of a plain pre-norm block with an identity layer scale, so it exposes the same
:class:`~.timm_vit.BlockParts`. Its ``WindowAttention`` adds a learned relative-position bias (one column of
``relative_position_bias_table`` per head) and, in shifted blocks, a ``-100`` mask between tokens that the
cyclic shift brought into one window (paper §3.2, eq. 4: ``softmax(QKᵀ/√d + B)V``).

Token reduction, early exit and prompt tokens are refused by name (:data:`WINDOWED_REFUSAL`): every block
partitions a fixed ``H × W`` token grid into windows, so a token cannot be merged, dropped or inserted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
from timm.layers import ClassifierHead, Mlp, PatchEmbed
from timm.models.swin_transformer import (
    PatchMerging,
    SwinTransformer,
    SwinTransformerBlock,
    SwinTransformerStage,
    WindowAttention,
)

from ..errors import UnsupportedModelError
from .grid_info import GridInfo
from .protocol import arch_name
from .timm_vit import BlockParts

_SUPPORTED = "timm SwinTransformer (Swin v1: W-MSA/SW-MSA blocks, PatchMerging, LayerNorm, average pooling)"

#: methods that apply to a Swin (what a refusal points the user to)
SWIN_METHODS = (
    "ptq, mixed_ptq, precision, prune (heads/mlp/blocks), lora, lora_merge, adapter, merge (all but PLeaS), distill, "
    "finetune"
)

#: why methods that change the token sequence do not apply to a Swin
WINDOWED_REFUSAL = (
    "it runs windowed attention on a fixed token grid (every block partitions the H×W grid into {window} "
    "windows, shifted in odd blocks, and patch merging halves the grid between stages), so tokens cannot be {what}"
)


def refuse(model: nn.Module, method: str, what: str) -> UnsupportedModelError:
    """The refusal of a token-sequence method (``method``: its names, ``what``: what it would do to tokens)."""
    windows = "×".join(str(w) for w in _first_window(model)) if isinstance(model, SwinTransformer) else "fixed"
    why = WINDOWED_REFUSAL.format(window=windows, what=what)
    return UnsupportedModelError(
        f"{method} cannot run on a SwinTransformer: {why}; methods that apply to Swin: {SWIN_METHODS}"
    )


def _first_window(model: SwinTransformer) -> tuple[int, int]:
    return tuple(model.layers[0].blocks[0].window_size) if len(model.layers[0].blocks) else (0, 0)


@dataclass(frozen=True, kw_only=True)
class SwinInfo(GridInfo):
    """What methods need to know about a Swin; the fields a plain ViT's :class:`~.timm_vit.ViTInfo` has, plus the
    per-block geometry (``block_dims``: residual width, ``block_tokens``: tokens, ``block_spans``: keys each
    query attends to = window area, ``block_windows``: window size, ``block_shifts``: cyclic shift).

    ``embed_dim`` is the first stage's width and ``num_tokens`` / ``grid_size`` the first stage's grid (as timm
    names them); per-block values live in the ``block_*`` tuples."""

    block_windows: tuple[tuple[int, int], ...]
    block_shifts: tuple[tuple[int, int], ...]
    stage_grids: tuple[tuple[int, int], ...]


def _unsupported(where: str, module: nn.Module, what: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{where} is a {type(module).__name__}: the Swin adapter handles {what} there; vitkit handles {_SUPPORTED}"
    )


def _check_norm(module: nn.Module, where: str, *, identity_ok: bool = False) -> None:
    if identity_ok and isinstance(module, nn.Identity):
        return
    if type(module) is not nn.LayerNorm or module.weight is None or module.bias is None:
        raise _unsupported(where, module, "only nn.LayerNorm with affine weight and bias")


def stage_blocks(model: nn.Module) -> list[tuple[str, nn.Module, int]]:
    """Every block as ``(name, module, stage index)`` in forward order."""
    return [
        (f"layers.{s}.blocks.{j}", blk, s) for s, stage in enumerate(model.layers) for j, blk in enumerate(stage.blocks)
    ]


def block_parts(block: nn.Module, *, index: int | None = None, where: str | None = None) -> BlockParts:
    """The sub-modules of a timm ``SwinTransformerBlock`` (or a vitkit patch of its attention / MLP), as a pre-norm
    block with identity layer scales; ``UnsupportedModelError`` naming anything else."""
    where = where or (f"block {index}" if index is not None else "block")
    if type(block) is not SwinTransformerBlock:
        raise _unsupported(where, block, "only timm's SwinTransformerBlock")
    if not isinstance(block.attn, WindowAttention):
        raise _unsupported(f"{where}.attn", block.attn, "only timm's WindowAttention")
    if not isinstance(block.mlp, Mlp):
        raise _unsupported(f"{where}.mlp", block.mlp, "only timm's Mlp")
    return BlockParts(
        block.norm1,
        block.attn,
        nn.Identity(),
        block.drop_path1,
        block.norm2,
        block.mlp,
        nn.Identity(),
        block.drop_path2,
    )


def _linear_like(module) -> bool:
    """An ``nn.Linear``, or a module standing in for one (a deployed int8 linear): it names its widths as
    ``nn.Linear`` does. Methods that need a real ``nn.Linear`` there (ptq, lora) check that themselves."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Module) and all(isinstance(getattr(module, a, None), int) for a in _WIDTHS)


_WIDTHS = ("in_features", "out_features")


def _check_block(block: nn.Module, where: str) -> None:
    parts = block_parts(block, where=where)
    _check_norm(parts.norm1, f"{where}.norm1")
    _check_norm(parts.norm2, f"{where}.norm2")
    attn, mlp = parts.attn, parts.mlp
    for name in ("qkv", "proj"):
        if not _linear_like(getattr(attn, name)):
            raise _unsupported(f"{where}.attn.{name}", getattr(attn, name), "an nn.Linear")
    if attn.qkv.out_features % (3 * attn.num_heads):
        raise UnsupportedModelError(f"{where}.attn.qkv has {attn.qkv.out_features} outputs, not 3 × heads × head_dim")
    for name in ("fc1", "fc2"):
        if not _linear_like(getattr(mlp, name, None)):
            raise _unsupported(f"{where}.mlp.{name}", getattr(mlp, name, None), "an nn.Linear")
    if not isinstance(mlp.norm, nn.Identity):
        raise _unsupported(f"{where}.mlp.norm", mlp.norm, "no hidden norm (nn.Identity)")


def head_dim(attn: nn.Module) -> int:
    """``d`` of a ``WindowAttention`` (timm keeps no attribute for it: qkv has ``3·H·d`` outputs)."""
    return int(attn.qkv.out_features) // (3 * int(attn.num_heads))


def describe(model: nn.Module) -> SwinInfo:
    """Inspect ``model`` and return its :class:`SwinInfo`, or raise ``UnsupportedModelError`` naming the module."""
    if not isinstance(model, SwinTransformer):
        raise UnsupportedModelError(
            f"{type(model).__name__} is not a timm SwinTransformer; vitkit handles {_SUPPORTED}"
        )
    pe = model.patch_embed
    if not isinstance(pe, PatchEmbed) or not isinstance(pe.proj, nn.Conv2d):
        raise _unsupported("patch_embed", pe, "timm's PatchEmbed with a Conv2d projection")
    _check_norm(pe.norm, "patch_embed.norm", identity_ok=True)
    features = {"windowed_attention", "relative_position_bias", "avg_pool"}
    heads, dims, hidden, widths, tokens, spans, windows, shifts, grids, names = ([] for _ in range(10))
    for s, stage in enumerate(model.layers):
        where = f"layers.{s}"
        if type(stage) is not SwinTransformerStage:
            raise _unsupported(where, stage, "only timm's SwinTransformerStage")
        ds = stage.downsample
        if isinstance(ds, PatchMerging):
            _check_norm(ds.norm, f"{where}.downsample.norm")
            if not _linear_like(ds.reduction):
                raise _unsupported(f"{where}.downsample.reduction", ds.reduction, "an nn.Linear")
            features.add("patch_merging")
        elif not isinstance(ds, nn.Identity):
            raise _unsupported(f"{where}.downsample", ds, "only PatchMerging or no downsampling")
        grid = tuple(int(g) for g in stage.output_resolution)
        grids.append(grid)
        for j, blk in enumerate(stage.blocks):
            bname = f"{where}.blocks.{j}"
            _check_block(blk, bname)
            attn = blk.attn
            heads.append(int(attn.num_heads))
            dims.append(head_dim(attn))
            hidden.append(int(blk.mlp.fc1.out_features))
            widths.append(int(blk.dim))
            tokens.append(grid[0] * grid[1])
            windows.append(tuple(int(w) for w in blk.window_size))
            shifts.append(tuple(int(w) for w in blk.shift_size))
            spans.append(int(blk.window_area))
            names.append(bname)
            if any(blk.shift_size):
                features.add("shifted_windows")
    _check_norm(model.norm, "norm")
    head = model.head
    if not isinstance(head, ClassifierHead):
        raise _unsupported("head", head, "timm's ClassifierHead")
    if model.global_pool != "avg":
        raise UnsupportedModelError(f"global_pool={model.global_pool!r} is not supported on Swin: use 'avg'")
    if not (isinstance(head.fc, nn.Identity) or _linear_like(head.fc)):
        raise _unsupported("head.fc", head.fc, "an nn.Linear classifier")
    return SwinInfo(
        arch=arch_name(model),
        depth=len(names),
        embed_dim=int(model.embed_dim),
        num_heads=tuple(heads),
        head_dim=tuple(dims),
        mlp_hidden=tuple(hidden),
        block_dims=tuple(widths),
        block_tokens=tuple(tokens),
        block_spans=tuple(spans),
        block_windows=tuple(windows),
        block_shifts=tuple(shifts),
        stage_grids=tuple(grids),
        global_pool=str(model.global_pool),
        patch_size=tuple(int(p) for p in pe.patch_size),
        grid_size=tuple(int(g) for g in pe.grid_size),
        img_size=tuple(int(s) for s in pe.img_size),
        in_chans=int(pe.proj.in_channels),
        num_classes=int(model.num_classes),
        block_names=tuple(names),
        features=frozenset(features),
    )


def block_linears(block: nn.Module, *, index: int | None = None) -> dict[str, nn.Module | None]:
    """A Swin block's Linear layers by role (no attention gate)."""
    p = block_parts(block, index=index)
    return {"qkv": p.attn.qkv, "attn_out": p.attn.proj, "attn_gate": None, "mlp_in": p.mlp.fc1, "mlp_out": p.mlp.fc2}


def input_size(model: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) the model expects, from its patch embedding."""
    pe = model.patch_embed
    return int(pe.proj.in_channels), int(pe.img_size[0]), int(pe.img_size[1])
