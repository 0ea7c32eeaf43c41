"""State-dict keys of a timm ``VisionTransformer`` by role: which block and part each key belongs to, and which
axes of each tensor the unit permutations of the network act on (what permutation-based merging such as PLeaS
needs).

Parts are the protocol's roles (:data:`~vitkit.adapters.protocol.LINEAR_ROLES`: ``qkv`` / ``attn_out`` /
``mlp_in`` / ``mlp_out`` / ``head``, plus ``norm1`` / ``norm2`` / ``embed`` / ``pos`` / ``prefix`` /
``final_norm`` / ``layer_scale``) and more: ``qk_norm`` (per-head q/k norms), ``prompt`` (visual-prompt
tokens vitkit inserts), the GLU MLP parts of :mod:`.timm_mlp` (``mlp_gate``; ``mlp_norm`` a hidden norm,
``mlp_in_norm`` GeGluMlp's input norm), ``stem`` (a conv stem's tensors) and ``other`` (a key this adapter does not
recognise: gates, scale norms, attention-pool heads, ...). ``KeyRole.extra["module"]`` is the module a key belongs
to (``""`` for root parameters); a layer-scale key's ``extra["scales"]`` is the role of the linear whose output it
scales.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from ..errors import UnsupportedModelError
from . import timm_mlp
from .protocol import (  # noqa: F401  (role tables re-exported: they were defined here)
    ATTN_QKV,
    ATTN_V,
    BLOCK_LINEARS,
    MLP_HIDDEN,
    RESIDUAL,
    BlockKeys,
    KeyRole,
    block_keys,
)
from .timm_vit import block_parts
from .timm_vit_surgery import slice_linear

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")

#: key suffix inside a block → (part, tensor kind).
_BLOCK_KEYS: dict[str, tuple[str, str]] = {
    "norm1.weight": ("norm1", "weight"),
    "norm1.bias": ("norm1", "bias"),
    "attn.qkv.weight": ("qkv", "weight"),
    "attn.qkv.bias": ("qkv", "bias"),
    "attn.q_norm.weight": ("qk_norm", "weight"),
    "attn.q_norm.bias": ("qk_norm", "bias"),
    "attn.k_norm.weight": ("qk_norm", "weight"),
    "attn.k_norm.bias": ("qk_norm", "bias"),
    "attn.proj.weight": ("attn_out", "weight"),
    "attn.proj.bias": ("attn_out", "bias"),
    "ls1.gamma": ("layer_scale", "param"),
    "norm2.weight": ("norm2", "weight"),
    "norm2.bias": ("norm2", "bias"),
    "mlp.fc1.weight": ("mlp_in", "weight"),
    "mlp.fc1.bias": ("mlp_in", "bias"),
    "mlp.fc2.weight": ("mlp_out", "weight"),
    "mlp.fc2.bias": ("mlp_out", "bias"),
    "ls2.gamma": ("layer_scale", "param"),
    "vpt_prompt": ("prompt", "param"),
}
#: a block's LayerScale key suffix → the role of the linear whose output it scales.
_LAYER_SCALE_OF = {"ls1.gamma": "attn_out", "ls2.gamma": "mlp_out"}
#: root-level key → (part, tensor kind).
_TOP_KEYS: dict[str, tuple[str, str]] = {
    "cls_token": ("prefix", "param"),
    "reg_token": ("prefix", "param"),
    "dist_token": ("prefix", "param"),
    "pos_embed": ("pos", "param"),
    "patch_embed.proj.weight": ("embed", "weight"),
    "patch_embed.proj.bias": ("embed", "bias"),
    "norm.weight": ("final_norm", "weight"),
    "norm.bias": ("final_norm", "bias"),
    "fc_norm.weight": ("final_norm", "weight"),
    "fc_norm.bias": ("final_norm", "bias"),
    "head.weight": ("head", "weight"),
    "head.bias": ("head", "bias"),
    "head_dist.weight": ("head", "weight"),
    "head_dist.bias": ("head", "bias"),
    "vpt_prompt": ("prompt", "param"),
}

#: (part, tensor kind) → ((axis, permutation group), ...); a negative axis counts from the end.
_PERMUTED_AXES: dict[tuple[str, str], tuple[tuple[int, str], ...]] = {
    ("norm1", "weight"): ((0, RESIDUAL),),
    ("norm1", "bias"): ((0, RESIDUAL),),
    ("norm2", "weight"): ((0, RESIDUAL),),
    ("norm2", "bias"): ((0, RESIDUAL),),
    ("layer_scale", "param"): ((0, RESIDUAL),),
    ("qkv", "weight"): ((0, ATTN_QKV), (1, RESIDUAL)),
    ("qkv", "bias"): ((0, ATTN_QKV),),
    ("qk_norm", "weight"): (),  # shared by every head: only permuted with its head (see PLeaS)
    ("qk_norm", "bias"): (),
    ("attn_out", "weight"): ((0, RESIDUAL), (1, ATTN_V)),
    ("attn_out", "bias"): ((0, RESIDUAL),),
    ("mlp_in", "weight"): ((0, MLP_HIDDEN), (1, RESIDUAL)),
    ("mlp_in", "bias"): ((0, MLP_HIDDEN),),
    ("mlp_out", "weight"): ((0, RESIDUAL), (1, MLP_HIDDEN)),
    ("mlp_out", "bias"): ((0, RESIDUAL),),
    ("prefix", "param"): ((-1, RESIDUAL),),
    ("pos", "param"): ((-1, RESIDUAL),),
    ("embed", "weight"): ((0, RESIDUAL),),
    ("embed", "bias"): ((0, RESIDUAL),),
    ("final_norm", "weight"): ((0, RESIDUAL),),
    ("final_norm", "bias"): ((0, RESIDUAL),),
    ("head", "weight"): ((1, RESIDUAL),),
    ("head", "bias"): (),
}


def _tensor_kind(key: str) -> str:
    last = key.rsplit(".", 1)[-1]
    return last if last in ("weight", "bias") else "param"


def _module_of(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else ""


def key_role(key: str) -> KeyRole:
    """The :class:`KeyRole` of one state-dict key (part ``"other"`` when the key is not recognised)."""
    m = _BLOCK.match(key)
    block, suffix, table = (int(m.group(1)), m.group(2), _BLOCK_KEYS) if m else (None, key, _TOP_KEYS)
    part, tensor = table.get(suffix, ("other", _tensor_kind(key)))
    extra: dict = {"module": _module_of(key)}
    if m and suffix in _LAYER_SCALE_OF:
        extra["scales"] = _LAYER_SCALE_OF[suffix]
    return KeyRole(key, block, part, tensor, extra)


def key_roles(state_dict: Mapping[str, torch.Tensor] | Iterable[str]) -> dict[str, KeyRole]:
    """The role of every key of ``state_dict`` (a state dict or its keys), in key order; GLU MLP keys by
    :func:`.timm_mlp.mlp_key_parts`, a conv stem's (``patch_embed.backbone.*``) as part ``stem``."""
    keys = list(state_dict)
    per_block: dict[int, set[str]] = {}
    for k in keys:
        m = _BLOCK.match(k)
        if m:
            per_block.setdefault(int(m.group(1)), set()).add(m.group(2))
    glu = {b: timm_mlp.mlp_key_parts(sfx) for b, sfx in per_block.items()}
    out = {}
    for k in keys:
        role, m = key_role(k), _BLOCK.match(k)
        if m and m.group(2) in glu[role.block]:
            part, tensor = glu[role.block][m.group(2)]
            role = KeyRole(k, role.block, part, tensor, role.extra)
        elif role.part == "other" and k.startswith("patch_embed.backbone."):
            role = KeyRole(k, None, "stem", role.tensor, role.extra)
        out[k] = role
    return out


def permutation_axes(roles: Mapping[str, KeyRole]) -> dict[str, tuple[tuple[int, str], ...]]:
    """Per key: the ``(axis, group)`` pairs a unit permutation acts on, ``group`` one of :data:`RESIDUAL`,
    :data:`ATTN_QKV`, :data:`ATTN_V` (per block) or :data:`MLP_HIDDEN` (per block); empty when the tensor is
    unchanged. Raises :class:`UnsupportedModelError` naming the first key whose symmetry is unknown."""
    out = {}
    for key, role in roles.items():
        if role.part in timm_mlp.GLU_PARTS:
            raise UnsupportedModelError(
                f"no known permutation symmetry for MLP tensor {key!r} (a GLU gate or an MLP norm): use another "
                "merge method for this model"
            )
        axes = _PERMUTED_AXES.get((role.part, role.tensor))
        if axes is None:
            raise UnsupportedModelError(
                f"no known permutation symmetry for tensor {key!r}: unit permutations support plain timm "
                "VisionTransformer blocks (norm1/attn with fused qkv/ls/norm2/mlp); use another merge method "
                "for this model"
            )
        out[key] = axes
    return out


def set_mlp_widths(model: nn.Module, widths: Sequence[int]) -> None:
    """Resize block ``i``'s MLP hidden layer to ``widths[i]`` neurons (shapes only: the new rows/columns repeat
    the old ones; load real weights afterwards). Blocks already at their width are left as they are."""
    for i, blk in enumerate(model.blocks):
        mlp = block_parts(blk, index=i).mlp
        if timm_mlp.is_glu(mlp, f"blocks.{i}.mlp"):
            raise UnsupportedModelError(f"blocks.{i}.mlp is a {type(mlp).__name__}: resizing a GLU MLP is not handled")
        width = int(widths[i])
        if mlp.fc1.out_features != width:
            idx = torch.arange(width) % mlp.fc1.out_features
            mlp.fc1 = slice_linear(mlp.fc1, rows=idx)
            mlp.fc2 = slice_linear(mlp.fc2, cols=idx)
