"""State-dict key roles and shape surgery of the hybrids' attention blocks (TinyViT, EfficientFormer): remove heads,
MLP neurons or whole attention blocks by slicing real weights, as :mod:`.timm_vit_surgery` does for a plain ViT.

The hosts' attention (LeViT's, Graham et al., ICCV 2021) fuses ``qkv`` **head-major**: per head ``h`` the rows
``[q_h (d) | k_h (d) | v_h (v)]`` sit together (``v = attn_ratio·d``; 1 on TinyViT, 4 on EfficientFormer), and adds
a learned bias ``B[h, offset(i, j)]`` per head to the logits (``softmax(QKᵀ/√d + B)V``). Removing head ``h`` removes
those rows, its ``v`` columns of ``proj`` and its row of ``attention_biases`` (the offset index table is shared by
every head), which is exact: the other heads' outputs are unchanged and head ``h`` contributed ``proj[:, v_h]·o_h``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

from ..errors import UnsupportedModelError
from .protocol import KeyRole
from .timm_vit_surgery import slice_linear


def key_roles(
    state_dict: Mapping[str, torch.Tensor],
    linears: Mapping[str, str],
    attn: str,
    attn_norm: str,
    mlp_norm: str,
    heads: Sequence[str],
) -> dict[str, KeyRole]:
    """The role of every key: keys under an attention block (found by its ``<attn>.qkv.weight``) get the block's
    index and the part of :data:`~.protocol.BLOCK_LINEARS` (``linears``: role → name relative to the block),
    ``norm1`` (the attention norm ``attn_norm``), ``norm2`` (the MLP norm ``mlp_norm``), ``attn_bias`` or
    ``layer_scale``; keys of the classifier modules ``heads`` part ``head``; every other key (the conv stages) part
    ``other``."""
    keys = list(state_dict)
    qkv = re.compile(rf"^(.+)\.{re.escape(attn)}\.qkv\.weight$")
    prefixes = [m.group(1) for k in keys if (m := qkv.match(k))]
    index = {p: i for i, p in enumerate(prefixes)}
    parts = {f"{rel}.": role for role, rel in linears.items()}
    parts.update({f"{attn_norm}.": "norm1", f"{mlp_norm}.": "norm2", "ls1.": "layer_scale", "ls2.": "layer_scale"})
    parts[f"{attn}.attention_biases"] = "attn_bias"
    head_prefixes = tuple(f"{h}." for h in heads)
    out = {}
    for k in keys:
        tensor = k.rsplit(".", 1)[-1] if k.rsplit(".", 1)[-1] in ("weight", "bias") else "param"
        prefix = next((p for p in prefixes if k.startswith(p + ".")), None)
        block, part, extra = None, "other", {"module": k.rsplit(".", 1)[0] if "." in k else ""}
        if prefix is not None:
            block, rest = index[prefix], k[len(prefix) + 1 :]
            part = next((role for start, role in parts.items() if rest.startswith(start)), "other")
            if part == "layer_scale":  # the role of the linear whose output it scales
                extra["scales"] = "attn_out" if rest.startswith("ls1.") else "mlp_out"
        elif k.startswith(head_prefixes):
            part = "head"
        out[k] = KeyRole(k, block, part, tensor, extra)
    return out


def _check_kept(keep: list[int], n: int, where: str, what: str) -> None:
    if not keep:
        raise UnsupportedModelError(f"{where}: cannot remove every {what[:-1]} of an attention block")
    if keep[0] < 0 or keep[-1] >= n or len(set(keep)) != len(keep):
        raise UnsupportedModelError(f"{where}: kept {what} {keep} are not distinct indices below {n}")


def prune_heads(attn: nn.Module, keep: Sequence[int], where: str) -> None:
    """Keep only heads ``keep`` of a LeViT-style attention ``attn``: each kept head's ``[q | k | v]`` rows of the
    head-major ``qkv``, its ``v`` columns of ``proj`` and its row of ``attention_biases`` (module docstring)."""
    keep = sorted(int(k) for k in keep)
    h = int(attn.num_heads)
    _check_kept(keep, h, where, "heads")
    if len(keep) == h:
        return
    per_head, v = attn.qkv.out_features // h, int(attn.val_dim)
    idx = torch.as_tensor(keep, dtype=torch.long, device=attn.qkv.weight.device)
    rows = (idx[:, None] * per_head + torch.arange(per_head, device=idx.device)).reshape(-1)  # [K·(2d+v)]
    cols = (idx[:, None] * v + torch.arange(v, device=idx.device)).reshape(-1)  # [K·v]
    attn.qkv = slice_linear(attn.qkv, rows=rows)
    attn.proj = slice_linear(attn.proj, cols=cols)
    bias = attn.attention_biases
    attn.attention_biases = nn.Parameter(bias.detach()[idx].clone(), requires_grad=bias.requires_grad)
    attn.num_heads = len(keep)
    for name, width in (("out_dim", v), ("val_attn_dim", v), ("key_attn_dim", int(attn.key_dim))):
        if hasattr(attn, name):  # TinyViT: out_dim; EfficientFormer: key_attn_dim, val_attn_dim
            setattr(attn, name, width * len(keep))
    attn.attention_bias_cache = {}


def prune_mlp(mlp: nn.Module, keep: Sequence[int], where: str) -> None:
    """Keep only hidden neurons ``keep`` of an MLP with ``fc1`` / ``fc2`` Linears: ``fc1`` rows (+ bias), ``fc2``
    columns."""
    keep = sorted(int(k) for k in keep)
    n = int(mlp.fc1.out_features)
    _check_kept(keep, n, where, "neurons")
    if len(keep) == n:
        return
    idx = torch.as_tensor(keep, dtype=torch.long, device=mlp.fc1.weight.device)
    mlp.fc1 = slice_linear(mlp.fc1, rows=idx)
    mlp.fc2 = slice_linear(mlp.fc2, cols=idx)


def set_mlp_widths(mlps: Sequence[nn.Module], widths: Sequence[int]) -> None:
    """Resize each MLP's hidden layer to ``widths[i]`` neurons (shapes only: load real weights afterwards)."""
    for mlp, width in zip(mlps, widths, strict=True):
        if mlp.fc1.out_features != int(width):
            idx = torch.arange(int(width)) % mlp.fc1.out_features
            mlp.fc1 = slice_linear(mlp.fc1, rows=idx)
            mlp.fc2 = slice_linear(mlp.fc2, cols=idx)


def keep_blocks(stages: nn.Module, blocks: Sequence[nn.Module], keep: Sequence[int]) -> None:
    """Keep only attention blocks ``keep`` (indices into ``blocks``, forward order): the others leave their stage's
    ``blocks`` list (with a TinyViT block goes its ``local_conv``); conv blocks, downsampling and stages stay."""
    keep = sorted(int(k) for k in keep)
    if not keep or keep[0] < 0 or keep[-1] >= len(blocks) or len(set(keep)) != len(keep):
        raise UnsupportedModelError(f"kept blocks {keep} must be a non-empty subset of 0..{len(blocks) - 1}")
    if len(keep) == len(blocks):
        return
    drop = {id(blocks[i]) for i in range(len(blocks)) if i not in keep}
    for stage in stages:
        if any(id(b) in drop for b in stage.blocks):
            stage.blocks = nn.Sequential(*[b for b in stage.blocks if id(b) not in drop])
            if hasattr(stage, "depth"):
                stage.depth = len(stage.blocks)
