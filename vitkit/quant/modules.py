"""Fake-quant modules: quantizers with their parameters as buffers, and the patched timm layers.

Layers are patched by swapping ``__class__`` (``nn.Linear`` → :class:`QuantLinear`, ``nn.Conv2d`` →
:class:`QuantConv2d`, timm ``Attention`` → :class:`QuantAttention`) and adding quantizer sub-modules, so
the original weights keep their state-dict names (``blocks.0.attn.qkv.weight``) and the quantizer
parameters appear beside them (``blocks.0.attn.qkv.a_quant.scale``).

A quantizer is *calibrating* until it has seen one batch: on that forward it fits its parameters to its
input (with every upstream quantizer already active — RepQ-ViT's sequential calibration) and from then on
quantizes. :func:`quantizers` and :func:`set_quant_enabled` act on all of them.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Attention

from ..errors import DataError
from ..ops import quant as Q


class Quantizer(nn.Module):
    """Base: ``where`` names the module for error messages; ``enabled=False`` passes values through."""

    kind = "base"

    def __init__(self, bits: int, where: str = "") -> None:
        super().__init__()
        self.bits = Q.check_bits(bits)
        self.where = where
        self.enabled = True
        self.calibrated = False

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "bits": self.bits}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if not self.calibrated:
            if not torch.isfinite(x).all():
                raise DataError(
                    f"non-finite (NaN/Inf) activations reach {self.where or 'a quantizer'} during calibration: "
                    "check the calibration images and the model weights"
                )
            with torch.no_grad():
                self.fit(x)
            self.calibrated = True
        return self.quant(x)

    def fit(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def quant(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class UniformQuantizer(Quantizer):
    """Uniform quantizer; per-tensor (``channels=None``) or per-channel along ``axis`` (``scale``: ``[C]``)."""

    kind = "uniform"

    def __init__(
        self,
        bits: int,
        *,
        symmetric: bool = False,
        channels: int | None = None,
        axis: int = -1,
        search: str = "minmax",
        percentile: float = 99.99,
        where: str = "",
    ) -> None:
        super().__init__(bits, where)
        self.symmetric = bool(symmetric)
        self.channels = channels
        self.axis = axis
        self.search = search
        self.percentile = float(percentile)
        n = channels or 1
        self.register_buffer("scale", torch.ones(n))
        self.register_buffer("zero_point", torch.zeros(n))

    def spec(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "bits": self.bits,
            "symmetric": self.symmetric,
            "channels": self.channels,
            "axis": self.axis,
            "search": self.search,
            "percentile": self.percentile,
        }

    def _axis(self) -> int | None:
        return self.axis if self.channels else None

    def fit(self, x: torch.Tensor) -> None:
        s, z = Q.search_uniform(
            x, self.bits, symmetric=self.symmetric, axis=self._axis(), method=self.search, percentile=self.percentile
        )
        self.scale.copy_(s.reshape(self.scale.shape))
        self.zero_point.copy_(z.reshape(self.zero_point.shape))

    def quant(self, x: torch.Tensor) -> torch.Tensor:
        fn = Q.fake_quant_ste if getattr(self, "ste", False) else Q.fake_quant  # ste: block reconstruction
        return fn(x, self.scale, self.zero_point, self.bits, symmetric=self.symmetric, axis=self._axis())


class LogQuantizer(Quantizer):
    """log2 / log√2 quantizer for post-softmax attention (RepQ-ViT eq. 11–12); ``delta``: ``[1]``."""

    kind = "log"

    def __init__(self, bits: int, *, sqrt2: bool = True, where: str = "") -> None:
        super().__init__(bits, where)
        self.sqrt2 = bool(sqrt2)
        self.register_buffer("delta", torch.ones(1))

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "bits": self.bits, "sqrt2": self.sqrt2}

    def fit(self, x: torch.Tensor) -> None:
        self.delta.copy_(Q.search_log2(x, self.bits, sqrt2=self.sqrt2))

    def quant(self, x: torch.Tensor) -> torch.Tensor:
        return Q.log2_fake_quant(x, self.delta, self.bits, sqrt2=self.sqrt2)


class TwinUniformQuantizer(Quantizer):
    """PTQ4ViT twin-uniform quantizer for post-softmax (``mode="softmax"``) or post-GELU values."""

    kind = "twin"

    def __init__(self, bits: int, *, mode: str = "softmax", where: str = "") -> None:
        super().__init__(bits, where)
        if mode not in ("softmax", "gelu"):
            raise ValueError(f"twin-uniform mode must be softmax or gelu, got {mode!r}")
        self.mode = mode
        self.register_buffer("delta", torch.ones(1))

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "bits": self.bits, "mode": self.mode}

    def fit(self, x: torch.Tensor) -> None:
        fit = Q.search_twin_softmax if self.mode == "softmax" else Q.search_twin_gelu
        self.delta.copy_(fit(x, self.bits))

    def quant(self, x: torch.Tensor) -> torch.Tensor:
        fn = Q.twin_uniform_softmax if self.mode == "softmax" else Q.twin_uniform_gelu
        return fn(x, self.delta, self.bits)


def make_quantizer(spec: dict[str, Any], where: str = "") -> Quantizer:
    """Build a quantizer from its :meth:`Quantizer.spec` (used by surgery and by the artifact restore hook)."""
    spec = dict(spec)
    kind = spec.pop("kind")
    cls = {"uniform": UniformQuantizer, "log": LogQuantizer, "twin": TwinUniformQuantizer}[kind]
    return cls(where=where, **spec)


class QuantLinear(nn.Linear):
    """``nn.Linear`` whose input passes ``a_quant`` and whose weight passes ``w_quant`` (either may be absent)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a_q, w_q = getattr(self, "a_quant", None), getattr(self, "w_quant", None)
        if a_q is not None:
            x = a_q(x)
        w = w_q(self.weight) if w_q is not None else self.weight
        return F.linear(x, w, self.bias)


class QuantConv2d(nn.Conv2d):
    """``nn.Conv2d`` (patch embedding) with input and per-output-channel weight quantizers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a_q, w_q = getattr(self, "a_quant", None), getattr(self, "w_quant", None)
        if a_q is not None:
            x = a_q(x)
        w = w_q(self.weight) if w_q is not None else self.weight
        return self._conv_forward(x, w, self.bias)


class QuantAttention(Attention):
    """timm ``Attention`` with explicit ``q·kᵀ`` and ``attn·v`` matmuls whose inputs pass quantizers
    (``q_quant``, ``k_quant``, ``attn_quant`` on the softmax output, ``v_quant``). What changed: the fused
    SDPA kernel is replaced by the manual path, since the attention map itself is quantized. An additive or
    boolean ``attn_mask`` (e.g. token merging's proportional-attention bias) is added to the logits before the
    softmax, so the quantized map is the masked one."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [3,B,H,N,d]
        q, k, v = qkv.unbind(0)  # each [B,H,N,d]
        q, k = self.q_norm(q), self.k_norm(k)
        q = _maybe(self, "q_quant", q * self.scale)
        k = _maybe(self, "k_quant", k)
        logits = q @ k.transpose(-2, -1)  # [B,H,N,N]
        if is_causal:
            logits = logits.masked_fill(logits.new_ones(N, N, dtype=torch.bool).triu(1), float("-inf"))
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
        elif attn_mask is not None:
            logits = logits + attn_mask
        attn = logits.softmax(dim=-1)  # [B,H,N,N]
        attn = _maybe(self, "attn_quant", self.attn_drop(attn))
        v = _maybe(self, "v_quant", v)
        x = (attn @ v).transpose(1, 2).reshape(B, N, self.attn_dim)  # [B,N,H*d]
        x = self.norm(x)
        x = self.proj(x)
        return self.proj_drop(x)


def _maybe(module: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    q = getattr(module, name, None)
    return q(x) if q is not None else x


PATCHED = {nn.Linear: QuantLinear, nn.Conv2d: QuantConv2d, Attention: QuantAttention}
UNPATCHED = {v: k for k, v in PATCHED.items()}


def patch_module(module: nn.Module, quantizers: dict[str, Quantizer]) -> None:
    """Swap ``module`` to its quantized class and attach ``quantizers`` (``{"a_quant": ..., "w_quant": ...}``).
    A module with a weight quantizer also gets the packed-weight state-dict hooks (:func:`pack_weight_hook`)."""
    base = UNPATCHED.get(type(module), type(module))
    if base not in PATCHED:
        raise TypeError(f"cannot quantize a {type(module).__name__}")
    module.__class__ = PATCHED[base]
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
