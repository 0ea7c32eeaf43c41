"""timm's transformer MLPs by kind — what every timm adapter with pre-norm blocks (plain ViT, EVA) shares about the
MLP of a block: which Linears it has and their roles, its hidden width, the norm that feeds its input Linears (the
RepQ-ViT pair), its state-dict keys, and exact neuron pruning.

Kinds (:func:`mlp_kind`):

* ``"mlp"`` — timm ``Mlp``: ``fc2(norm(act(fc1 x)))`` (``norm`` a hidden norm, usually Identity);
* ``"packed"`` — timm ``GluMlp`` / ``SwiGLUPacked``: one ``fc1`` whose ``2·H`` rows are ``[gate; value]`` (or
  ``[value; gate]``, ``gate_last``), ``fc2(norm(act(g)·v))``;
* ``"split"`` — timm ``SwiGLU``: gate ``fc1_g``, value ``fc1_x``, ``fc2(norm(act(fc1_g x)·fc1_x x))``;
* ``"geglu"`` — ViTamin's ``GeGluMlp`` (Chen et al., "ViTamin: Designing Scalable Vision Models in the
  Vision-Language Era", CVPR 2024): an *input* LayerNorm then ``w2(gelu(w0 h)·w1 h)`` with ``h = norm(x)``; gate
  ``w0``, value ``w1``, out ``w2``. Its ``norm`` feeds ``w0`` / ``w1`` (so that is the RepQ (norm → linears) pair,
  and the block's ``norm2`` feeds a norm, not a Linear: no pair).

A GLU neuron ``j`` computes ``act(g_j·x)·(v_j·x)`` (Shazeer, "GLU Variants Improve Transformer", 2020, Eq. 6:
FFN_GEGLU, FFN_SwiGLU): its gate row and value row belong together. Roles: gate and value both play ``mlp_in`` in
:meth:`~.protocol.HostAdapter.linear_roles` (they read the same input); :func:`mlp_block_linears` gives ``mlp_in`` =
value, ``mlp_gate`` = gate (a packed ``fc1`` is ``mlp_in`` with two rows per neuron). Anything else is refused with
:class:`~vitkit.errors.UnsupportedModelError` naming the module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
from timm.layers import GluMlp, Mlp, SwiGLU
from timm.models.vitamin import GeGluMlp

from ..errors import UnsupportedModelError
from .protocol import NormLinear
from .slicing import _check_kept, slice_linear

#: the MLP classes handled, for refusal messages
HANDLED = "timm Mlp, GluMlp / SwiGLUPacked, SwiGLU and ViTamin's GeGluMlp"

#: the exact MLP classes handled (a parallel branch mixes into one of these, never into an already-patched MLP)
MLP_CLASSES = (Mlp, GluMlp, SwiGLU, GeGluMlp)

#: kind → (gate attribute or None, value / input attribute, output attribute)
_ATTRS = {
    "mlp": (None, "fc1", "fc2"),
    "packed": (None, "fc1", "fc2"),
    "split": ("fc1_g", "fc1_x", "fc2"),
    "geglu": ("w0", "w1", "w2"),
}


def mlp_kind(mlp: nn.Module, where: str = "mlp") -> str:
    """``"mlp"``, ``"packed"``, ``"split"`` or ``"geglu"`` (see the module docstring); anything else is refused."""
    if isinstance(mlp, GeGluMlp):
        return "geglu"
    if isinstance(mlp, SwiGLU):
        return "split"
    if isinstance(mlp, GluMlp):
        if isinstance(mlp.fc1, nn.Conv2d) or mlp.chunk_dim != -1:
            raise UnsupportedModelError(f"{where}: a convolutional GluMlp is not handled ({HANDLED} are)")
        return "packed"
    if isinstance(mlp, Mlp):
        if isinstance(mlp.fc1, nn.Conv2d):
            raise UnsupportedModelError(f"{where}: a convolutional Mlp (use_conv) is not handled ({HANDLED} are)")
        return "mlp"
    raise UnsupportedModelError(f"{where}: MLP {type(mlp).__name__} is not handled ({HANDLED} are)")


def is_glu(mlp: nn.Module, where: str = "mlp") -> bool:
    return mlp_kind(mlp, where) != "mlp"


def mlp_linears(mlp: nn.Module) -> tuple[tuple[str, str], ...]:
    """``(attribute, role)`` of the MLP's Linears in forward order; a GLU's gate and value both play ``mlp_in``."""
    gate, value, out = _ATTRS[mlp_kind(mlp)]
    ins = ((gate, "mlp_in"),) if gate is not None else ()
    return (*ins, (value, "mlp_in"), (out, "mlp_out"))


def mlp_block_linears(mlp: nn.Module) -> dict[str, nn.Module]:
    """``mlp_in`` (the value Linear; a packed ``fc1`` stacks gate and value rows), ``mlp_out``, and ``mlp_gate``
    for a split GLU (``SwiGLU``'s ``fc1_g``, ``GeGluMlp``'s ``w0``)."""
    gate, value, out = _ATTRS[mlp_kind(mlp)]
    lin = {"mlp_in": getattr(mlp, value), "mlp_out": getattr(mlp, out)}
    if gate is not None:
        lin["mlp_gate"] = getattr(mlp, gate)
    return lin


def _width(mlp: nn.Module, *, hidden: bool) -> int:
    kind = mlp_kind(mlp)
    _, value, out = _ATTRS[kind]
    o, v = getattr(mlp, out), getattr(mlp, value)
    if isinstance(o, nn.Linear):  # a wrapped layer (e.g. an adapter's Sequential) is read from the other side
        return int(o.in_features if hidden else o.out_features)
    if isinstance(v, nn.Linear):
        return int(v.out_features) // (2 if kind == "packed" else 1) if hidden else int(v.in_features)
    raise UnsupportedModelError(f"MLP {type(mlp).__name__} has neither its {value} nor its {out} as a Linear")


def mlp_hidden(mlp: nn.Module) -> int:
    """Hidden neurons (a GLU neuron is one gate row and one value row)."""
    return _width(mlp, hidden=True)


def mlp_in_features(mlp: nn.Module) -> int:
    """Width of the MLP's input (the residual width)."""
    return _width(mlp, hidden=False)


def hidden_norm(mlp: nn.Module) -> nn.Module:
    """The norm over the hidden neurons before the output Linear (``Identity`` when absent; ``GeGluMlp``'s ``norm``
    is an input norm, not a hidden one)."""
    if mlp_kind(mlp) == "geglu":
        return nn.Identity()
    norm = getattr(mlp, "norm", None)
    return nn.Identity() if norm is None else norm


def input_norm(mlp: nn.Module) -> str | None:
    """Attribute of a norm *inside* the MLP that feeds its input Linears (``GeGluMlp``: ``norm``), else None."""
    return "norm" if mlp_kind(mlp) == "geglu" else None


def mlp_norm_linear(block_name: str, norm_name: str, mlp_name: str, mlp: nn.Module) -> NormLinear:
    """The (norm → linears) pair of one block's MLP: the block norm ``norm_name`` feeding the input Linears, or —
    for ``GeGluMlp`` — the MLP's own input norm (the block norm then feeds a norm, not a Linear). Names are
    relative to the model (``block_name`` is the block's, ``norm_name`` / ``mlp_name`` its children's)."""
    ins = tuple(f"{block_name}.{mlp_name}.{a}" for a, role in mlp_linears(mlp) if role == "mlp_in")
    inner = input_norm(mlp)
    norm = f"{block_name}.{mlp_name}.{inner}" if inner is not None else f"{block_name}.{norm_name}"
    return NormLinear(norm, ins, "mlp")


def check_mlp_linears(mlp: nn.Module, where: str) -> None:
    """Refuse slicing a Linear subclass (LoRA, fake quantization): it would drop the extra branch."""
    for attr, _ in mlp_linears(mlp):
        lin = getattr(mlp, attr)
        if isinstance(lin, nn.Linear) and type(lin) is not nn.Linear:
            raise UnsupportedModelError(
                f"{where}.{attr} is a {type(lin).__name__}: slicing it would drop its extra branch; "
                "prune before adapting, or fold it first (lora_merge step / vitkit.merge_back)"
            )


def _slice_norm(norm: nn.Module, idx: torch.Tensor, where: str) -> None:
    if not hasattr(norm, "normalized_shape"):
        raise UnsupportedModelError(f"{where} is a {type(norm).__name__}: cannot slice it")
    for name in ("weight", "bias"):
        p = getattr(norm, name, None)
        if p is not None:
            setattr(norm, name, nn.Parameter(p.detach().index_select(0, idx).clone(), requires_grad=p.requires_grad))
    norm.normalized_shape = (int(idx.numel()),)


def prune_mlp(mlp: nn.Module, keep: Sequence[int], *, where: str) -> None:
    """Keep hidden neurons ``keep``: gate and value rows as a pair (``fc1_g`` / ``fc1_x``, ``w0`` / ``w1``, or rows
    ``j`` and ``H + j`` of a packed ``fc1``), the output Linear's columns, the hidden norm's entries. Without a hidden
    norm, removing a neuron equals zeroing its input rows and biases (``act(0) = 0`` for GELU / SiLU; a GLU neuron
    gives ``act(0)·0 = 0`` even when only one of its rows is zero); with one, the norm's statistics are then taken
    over the kept neurons."""
    kind = mlp_kind(mlp, where)
    keep = sorted(int(k) for k in keep)
    n = mlp_hidden(mlp)
    _check_kept(keep, n, where, "MLP neurons", "cannot remove every MLP neuron; remove the block instead")
    if len(keep) == n:
        return
    gate, value, out = _ATTRS[kind]
    idx = torch.as_tensor(keep, dtype=torch.long, device=getattr(mlp, out).weight.device)
    if kind == "packed":
        mlp.fc1 = slice_linear(mlp.fc1, rows=torch.cat([idx, idx + n]))  # both halves' rows of each kept neuron
    else:
        for attr in (gate, value):
            if attr is not None:
                setattr(mlp, attr, slice_linear(getattr(mlp, attr), rows=idx))
    setattr(mlp, out, slice_linear(getattr(mlp, out), cols=idx))
    norm = hidden_norm(mlp)
    if not isinstance(norm, nn.Identity):
        _slice_norm(norm, idx, f"{where}.mlp.norm")


# -- state-dict keys -----------------------------------------------------------------------------------------------
#: a block's MLP key suffixes beyond a plain ``Mlp``'s (``mlp.fc1`` / ``mlp.fc2``) → (part, tensor kind); ``mlp.norm``
#: is a hidden norm (``mlp_norm``) except in a ``GeGluMlp``, where it is the input norm (:func:`mlp_key_parts`).
GLU_MLP_KEYS = {
    "mlp.fc1_g.weight": ("mlp_gate", "weight"),
    "mlp.fc1_g.bias": ("mlp_gate", "bias"),
    "mlp.fc1_x.weight": ("mlp_in", "weight"),
    "mlp.fc1_x.bias": ("mlp_in", "bias"),
    "mlp.w0.weight": ("mlp_gate", "weight"),
    "mlp.w0.bias": ("mlp_gate", "bias"),
    "mlp.w1.weight": ("mlp_in", "weight"),
    "mlp.w1.bias": ("mlp_in", "bias"),
    "mlp.w2.weight": ("mlp_out", "weight"),
    "mlp.w2.bias": ("mlp_out", "bias"),
    "mlp.norm.weight": ("mlp_norm", "weight"),
    "mlp.norm.bias": ("mlp_norm", "bias"),
}
#: parts of GLU tensors that no unit-permutation table covers (permutation merging refuses them by name)
GLU_PARTS = ("mlp_gate", "mlp_norm", "mlp_in_norm")


def mlp_key_parts(suffixes: Mapping[str, object] | set[str]) -> dict[str, tuple[str, str]]:
    """``{suffix: (part, tensor kind)}`` for the GLU MLP keys among one block's key ``suffixes`` (``mlp.norm`` of a
    ``GeGluMlp`` — recognised by its ``mlp.w0.weight`` — is the input norm, part ``mlp_in_norm``)."""
    geglu = "mlp.w0.weight" in suffixes
    out = {}
    for s in suffixes:
        if s in GLU_MLP_KEYS:
            part, tensor = GLU_MLP_KEYS[s]
            out[s] = ("mlp_in_norm" if geglu and part == "mlp_norm" else part, tensor)
    return out


def mlp_gelu_chains(model: nn.Module) -> list[tuple[str, str, str]]:
    """``(fc1 name, activation name, fc2 name)`` of every timm ``Mlp`` in ``model`` (any host family: blocks, an
    attention pool's MLP) that computes exactly ``fc2(gelu(fc1(x)))`` in eval mode (erf GELU, identity hidden norm,
    dropout only): the chains an int8 runtime may fuse (GELU and the requantization for ``fc2`` in ``fc1``'s GEMM
    epilogue). GLUs (``fc2``'s input is ``act(g)·v``), tanh GELU, a hidden norm and other MLP classes are left out."""
    out = []
    for name, mlp in model.named_modules():
        if type(mlp) is not Mlp:
            continue
        act, norm = mlp.act, mlp.norm
        exact_gelu = isinstance(act, nn.GELU) and act.approximate == "none"
        if not (exact_gelu and isinstance(norm, nn.Identity) and isinstance(mlp.fc1, nn.Module)):
            continue
        out.append((f"{name}.fc1", f"{name}.act", f"{name}.fc2"))
    return out
