"""Fake-quant layers: the host's Linear / Conv2d / attention with quantizers attached, and the patching helpers.

Layers are patched by swapping ``__class__`` (``nn.Linear`` → :class:`QuantLinear`, ``nn.Conv2d`` →
:class:`QuantConv2d`, the host's attention → :class:`QuantAttention`) and adding quantizer sub-modules
(:mod:`vitkit.quant.quantizer`), so the original weights keep their state-dict names (``<layer>.weight``) and
the quantizer parameters appear beside them (``<layer>.a_quant.scale``). :func:`quantizers` and
:func:`set_quant_enabled` act on all of them.

Evaluation speed. A calibrated weight quantizer's output is a constant, so :class:`QuantLinear` /
:class:`QuantConv2d` fake-quantize their weight once and keep it (:meth:`QuantWeightMixin.quant_weight`);
the cached tensor is recomputed whenever the weight, its scale or zero point is replaced or changed in place
(``load_state_dict``, RepQ's fold, an optimizer step: the tensors' version counters move), and it is bypassed
while autograd needs the weight's graph (grad mode with a weight or scale that requires grad, block
reconstruction's straight-through quantizers) and while tracing or compiling (ONNX export sees the quantizer
ops). Inside :func:`~vitkit.quant.quantizer.reference_quant` weights are re-quantized on every forward.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..adapters import EXPLICIT_ATTENTION
from ..adapters.protocol import explicit_host
from ..adapters.timm_vit_layers import ExplicitAttention
from ..ops import quant as Q
from .quantizer import CACHE_SLOTS, Quantizer, UniformQuantizer, cached, fast_path_ok


class QuantWeightMixin:
    """The layer's weight after ``w_quant``, computed once per weight/scale version (module docstring)."""

    def quant_weight(self) -> torch.Tensor:
        w, w_q = self.weight, getattr(self, "w_quant", None)
        if w_q is None or not w_q.enabled:
            return w
        if not w_q.calibrated or getattr(w_q, "ste", False) or not fast_path_ok(w, *w_q.buffers()):
            return w_q(w)  # calibrating, reconstructing, training, tracing: the live path
        return cached(self, "_vitkit_wq", (w, w_q, *w_q.buffers()), lambda: _share_if_equal(w_q(w), w))


def _share_if_equal(wq: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A weight loaded from a packed artifact already is its fake-quantized value: keep no second copy."""
    return w.detach() if torch.equal(wq, w) else wq


class QuantLinear(QuantWeightMixin, nn.Linear):
    """``nn.Linear`` whose input passes ``a_quant`` and whose weight passes ``w_quant`` (either may be absent)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a_q = getattr(self, "a_quant", None)
        if a_q is not None:
            x = a_q(x)
        return F.linear(x, self.quant_weight(), self.bias)


class QuantConv2d(QuantWeightMixin, nn.Conv2d):
    """``nn.Conv2d`` (patch embedding) with input and per-output-channel weight quantizers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a_q = getattr(self, "a_quant", None)
        if a_q is not None:
            x = a_q(x)
        return self._conv_forward(x, self.quant_weight(), self.bias)


class QuantSites:
    """Mixin for an explicit attention twin (:data:`~vitkit.adapters.EXPLICIT_ATTENTION`): each matmul input passes
    its quantizer — ``q_quant``, ``k_quant``, ``attn_quant`` on the softmax output, ``v_quant`` — when present."""

    def site(self, name: str, x: torch.Tensor) -> torch.Tensor:
        q = getattr(self, f"{name}_quant", None)
        return q(x) if q is not None else x


class QuantAttention(QuantSites, ExplicitAttention):
    """The host attention with explicit ``q·kᵀ`` and ``attn·v`` matmuls (the fused SDPA kernel is replaced, since
    the attention map itself is quantized) whose inputs pass quantizers: ``q_quant``, ``k_quant``, ``attn_quant``
    on the softmax output, ``v_quant`` — each applied when present. A mask (e.g. token merging's
    proportional-attention bias) is added to the logits before the softmax, so the quantized map is the masked one."""


PATCHED: dict[type, type] = {
    nn.Linear: QuantLinear,
    nn.Conv2d: QuantConv2d,
    ExplicitAttention.host_class: QuantAttention,
}
UNPATCHED: dict[type, type] = {v: k for k, v in PATCHED.items()}


def quant_class(cls: type) -> type | None:
    """The fake-quant class replacing ``cls`` (a quantized class maps to itself), None when there is none. Attention
    classes of other host families get ``Quant<Host>`` = :class:`QuantSites` + the adapter's explicit twin."""
    base = UNPATCHED.get(cls, cls)
    host = explicit_host(base) if base not in PATCHED and base not in UNPATCHED else None
    if host is not None and host is not base:  # a user subclass keeping the host's forward: quantized as the host
        quant = quant_class(host)
        sub = type(f"Quant{base.__name__}", (quant, base), {"__doc__": quant.__doc__, "__module__": __name__})
        PATCHED[base], UNPATCHED[sub] = sub, base
        return sub
    if base not in PATCHED and base in EXPLICIT_ATTENTION:
        twin = EXPLICIT_ATTENTION[base]
        doc = f"{base.__name__} with explicit matmuls whose inputs pass quantizers (see QuantSites)."
        quant = type(f"Quant{base.__name__}", (QuantSites, twin), {"__doc__": doc, "__module__": __name__})
        PATCHED[base], UNPATCHED[quant] = quant, base
    return PATCHED.get(base)


def is_quant_attention(module: nn.Module) -> bool:
    """True for a fake-quantized attention core of any host family."""
    return isinstance(module, QuantSites)


def patch_module(module: nn.Module, quantizers: dict[str, Quantizer]) -> None:
    """Swap ``module`` to its quantized class and attach ``quantizers`` (``{"a_quant": ..., "w_quant": ...}``).
    A module with a weight quantizer also gets the packed-weight state-dict hooks (:func:`pack_weight_hook`)."""
    cls = quant_class(type(module))
    if cls is None:
        raise TypeError(f"cannot quantize a {type(module).__name__}")
    module.__class__ = cls
    for name, q in quantizers.items():
        setattr(module, name, q)
    if "w_quant" in quantizers and not getattr(module, "_vitkit_packed_hooks", False):
        module.register_state_dict_post_hook(pack_weight_hook)
        module.register_load_state_dict_pre_hook(unpack_weight_hook)
        module._vitkit_packed_hooks = True


# -- packed weights in the state dict (artifacts) ------------------------------------------------------------------
_PACKING = {"on": True}


@contextlib.contextmanager
def float_state_dict():
    """Within this block ``state_dict()`` of ptq models holds fp32 weights (tracers such as ``torch.onnx.export``
    read parameters through it)."""
    before = _PACKING["on"]
    _PACKING["on"] = False
    try:
        yield
    finally:
        _PACKING["on"] = before


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned codes ``[0, 2^bits)`` → uint8: one per byte (5–8 bits) or two per byte, low nibble first (≤ 4)."""
    u = codes.to(torch.uint8).flatten()
    if bits > 4:
        return u.reshape(codes.shape)
    if u.numel() % 2:
        u = torch.cat([u, u.new_zeros(1)])
    return u[0::2] | (u[1::2] << 4)  # [ceil(numel/2)]


def unpack_codes(packed: torch.Tensor, bits: int, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`pack_codes` (int64 codes of ``shape``)."""
    if bits > 4:
        return packed.to(torch.int64).reshape(shape)
    lo, hi = packed & 0x0F, packed >> 4
    return torch.stack([lo, hi], dim=1).flatten()[: math.prod(shape)].to(torch.int64).reshape(shape)


def pack_weight_hook(module: nn.Module, state: dict, prefix: str, local_metadata: dict) -> None:
    """State-dict post hook: a calibrated uniform weight quantizer's weight is saved under its own name
    (``….weight``) as its unsigned integer codes (uint8; 4 bits and below two per byte, flattened) beside
    ``w_quant.scale``/``w_quant.zero_point`` instead of fp32 — 4× (8 bit) to 8× (4 bit) smaller artifacts.
    Loaders that bypass :func:`unpack_weight_hook` see uint8 there; tracers need :func:`float_state_dict`.
    The fake-quant output is unchanged by a round trip: the loaded weight is the dequantized ``(q − z)·s``,
    which the same quantizer maps back to ``q``."""
    w_q = getattr(module, "w_quant", None)
    key = prefix + "weight"
    if not _PACKING["on"] or not isinstance(w_q, UniformQuantizer) or not w_q.calibrated or key not in state:
        return
    axis = 0
    qmin, _ = Q.qrange(w_q.bits, w_q.symmetric)
    codes = Q.quantize(state[key].detach(), w_q.scale, w_q.zero_point, w_q.bits, symmetric=w_q.symmetric, axis=axis)
    state[key] = pack_codes((codes - qmin).to(torch.int64), w_q.bits)


def unpack_weight_hook(module: nn.Module, state: dict, prefix: str, *args) -> None:
    """Load pre hook: a uint8 (packed) ``….weight`` + the quantizer's scale/zero point from ``state`` → the float
    weight; a float weight loads as usual."""
    key = prefix + "weight"
    w_q = getattr(module, "w_quant", None)
    if key not in state or state[key].dtype != torch.uint8 or not isinstance(w_q, UniformQuantizer):
        return
    want = module.weight.numel() if w_q.bits > 4 else (module.weight.numel() + 1) // 2
    if state[key].numel() != want:
        return  # wrong size: load_state_dict reports the shape mismatch
    scale, zero = state[prefix + "w_quant.scale"], state[prefix + "w_quant.zero_point"]
    qmin, _ = Q.qrange(w_q.bits, w_q.symmetric)
    codes = unpack_codes(state[key], w_q.bits, module.weight.shape) + qmin
    w = Q.dequantize(codes.to(module.weight.dtype), scale, zero, axis=0)
    state[prefix + "weight"] = w.to(module.weight.dtype)


def unpatch_module(module: nn.Module) -> None:
    """Back to the float class; quantizer sub-modules removed (weights, possibly reparameterized, stay)."""
    for name in [n for n, c in module.named_children() if isinstance(c, Quantizer)]:
        delattr(module, name)
    for slot in CACHE_SLOTS:
        module.__dict__.pop(slot, None)
    if type(module) in UNPATCHED:
        module.__class__ = UNPATCHED[type(module)]


def quantizers(model: nn.Module) -> dict[str, Quantizer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, Quantizer)}


def set_quant_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch every quantizer on or off (off = the float model, with any reparameterized weights)."""
    for q in quantizers(model).values():
        q.enabled = enabled


def weight_bits(model: nn.Module) -> dict[str, int]:
    """Bits of each quantized weight, by module name."""
    return {
        n: m.w_quant.bits
        for n, m in model.named_modules()
        if isinstance(m, QuantLinear | QuantConv2d) and isinstance(getattr(m, "w_quant", None), Quantizer)
    }


def quantized_size_bytes(model: nn.Module) -> int:
    """Bytes of the model with each quantized weight packed at its bit width (+ fp32 per-channel scale and
    zero point), every other parameter in fp32."""
    total = 0
    packed: set[int] = set()
    for m in model.modules():
        w_q = getattr(m, "w_quant", None)
        if isinstance(m, QuantLinear | QuantConv2d) and isinstance(w_q, Quantizer):
            total += math.ceil(m.weight.numel() * w_q.bits / 8) + 8 * m.weight.shape[0]
            packed.add(id(m.weight))
    for p in model.parameters():
        if id(p) not in packed:
            total += p.numel() * p.element_size()
    return total
