"""Fake-quant modules: quantizers with their parameters as buffers, and the patched timm layers.

Layers are patched by swapping ``__class__`` (``nn.Linear`` → :class:`QuantLinear`, ``nn.Conv2d`` →
:class:`QuantConv2d`, timm ``Attention`` → :class:`QuantAttention`) and adding quantizer sub-modules, so
the original weights keep their state-dict names (``blocks.0.attn.qkv.weight``) and the quantizer
parameters appear beside them (``blocks.0.attn.qkv.a_quant.scale``).

A quantizer is *calibrating* until it has seen one batch: on that forward it fits its parameters to its
input (with every upstream quantizer already active — RepQ-ViT's sequential calibration) and from then on
quantizes. :func:`quantizers` and :func:`set_quant_enabled` act on all of them.

Evaluation speed. A calibrated weight quantizer's output is a constant, so :class:`QuantLinear` /
:class:`QuantConv2d` fake-quantize their weight once and keep it (:meth:`QuantWeightMixin.quant_weight`);
the cached tensor is recomputed whenever the weight, its scale or zero point is replaced or changed in place
(``load_state_dict``, RepQ's fold, an optimizer step: the tensors' version counters move), and it is bypassed
while autograd needs the weight's graph (grad mode with a weight or scale that requires grad, block
reconstruction's straight-through quantizers) and while tracing or compiling (ONNX export sees the quantizer
ops). Activation quantizers use the fast paths of :mod:`vitkit.ops.quant` (same values, fewer passes) when no
gradient is needed. A change made through ``tensor.data`` bypasses version counters: call
:func:`clear_quant_cache` after one. Inside :func:`reference_quant` everything is recomputed with the reference
formulas on every forward — the readable fallback the tests compare the fast path against with ``torch.equal``.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Attention

from ..errors import DataError
from ..ops import quant as Q

# -- eval-time caches -----------------------------------------------------------------------------------------------
_FAST = {"on": True}


@contextlib.contextmanager
def reference_quant():
    """Within this block quantizers use no cache and no fast path: weights are re-quantized on every forward and
    activations go through the reference formulas of :mod:`vitkit.ops.quant` (the pre-cache behaviour)."""
    before = _FAST["on"]
    _FAST["on"] = False
    try:
        yield
    finally:
        _FAST["on"] = before


def _fast_ok(*tensors: torch.Tensor) -> bool:
    """May a constant / in-place fast path replace the reference computation on ``tensors``?"""
    if not _FAST["on"] or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors)


class _Memo:
    """A value valid while the same objects hold the same tensor data: identity (weak references), then for each
    tensor its storage, version counter (bumped by every in-place change, ``load_state_dict`` included), dtype,
    device and shape. Not copied by ``copy.deepcopy`` (the copy recomputes) and never part of a state dict."""

    __slots__ = ("refs", "stamp", "value")

    def __init__(self, objs: tuple, value: Any) -> None:
        self.refs = tuple(weakref.ref(o) for o in objs)
        self.stamp = _stamp(objs)
        self.value = value

    def valid(self, objs: tuple) -> bool:
        if (
            self.stamp is None
            or len(objs) != len(self.refs)
            or any(r() is not o for r, o in zip(self.refs, objs, strict=True))
        ):
            return False
        return self.stamp == _stamp(objs)

    def __deepcopy__(self, memo: dict) -> None:
        return None


def _stamp(objs: tuple) -> tuple | None:
    try:
        return tuple(
            (t._version, t.data_ptr(), t.dtype, t.device, t.shape) for t in objs if isinstance(t, torch.Tensor)
        )
    except RuntimeError:  # inference tensors carry no version counter: never cached
        return None


def _memo(owner: nn.Module, slot: str, objs: tuple, make) -> Any:
    """``make()``, cached on ``owner`` under ``slot`` until one of ``objs`` is replaced or (tensors) changed."""
    memo = owner.__dict__.get(slot)
    if memo is not None and memo.valid(objs):
        return memo.value
    with torch.inference_mode(False), torch.no_grad():  # a plain tensor, usable outside inference mode too
        value = make()
    owner.__dict__[slot] = _Memo(objs, value)
    return value


_SLOTS = ("_vitkit_wq", "_vitkit_fast")


def clear_quant_cache(model: nn.Module) -> None:
    """Drop every cached fake-quantized weight and quantizer table (needed only after changes through
    ``tensor.data``, which no version counter sees; everything else invalidates itself)."""
    for m in model.modules():
        for slot in _SLOTS:
            m.__dict__.pop(slot, None)


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
    """Uniform quantizer; per-tensor (``channels=None``) or per-channel along ``axis`` (``scale``: ``[C]``).

    ``outlier_ratio`` (per-tensor only): at calibration, last-axis channels whose ``|x|`` max exceeds this multiple
    of the median channel's are kept in float (``float_channels``) and left out of the scale search — the
    simulation of :mod:`vitkit.quant.outliers`' mixed-precision decomposition (LLM.int8(), Dettmers et al. 2022).
    """

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
        outlier_ratio: float | None = None,
        float_channels: list[int] | None = None,
        where: str = "",
    ) -> None:
        super().__init__(bits, where)
        self.outlier_ratio = None if outlier_ratio is None else float(outlier_ratio)
        self.float_channels = [int(c) for c in float_channels] if float_channels else []
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
            **({"outlier_ratio": self.outlier_ratio} if self.outlier_ratio is not None else {}),
            **({"float_channels": list(self.float_channels)} if self.float_channels else {}),
        }

    def _axis(self) -> int | None:
        return self.axis if self.channels else None

    def fit(self, x: torch.Tensor) -> None:
        if self.outlier_ratio is not None and not self.channels and x.dim() >= 2:
            self.float_channels = Q.outlier_channels(Q.channel_absmax(x), self.outlier_ratio).tolist()
            self.__dict__.pop("_float_mask", None)
            if self.float_channels:
                x = x.index_fill(-1, torch.tensor(self.float_channels, device=x.device), 0.0)  # not searched
        s, z = Q.search_uniform(
            x, self.bits, symmetric=self.symmetric, axis=self._axis(), method=self.search, percentile=self.percentile
        )
        self.scale.copy_(s.reshape(self.scale.shape))
        self.zero_point.copy_(z.reshape(self.zero_point.shape))

    def quant(self, x: torch.Tensor) -> torch.Tensor:
        xq = self._quant(x)
        if not self.float_channels:
            return xq
        mask = self.__dict__.get("_float_mask")
        if mask is None or mask.device != x.device or mask.numel() != x.shape[-1]:
            mask = torch.zeros(x.shape[-1], dtype=torch.bool, device=x.device)
            mask[self.float_channels] = True
            self.__dict__["_float_mask"] = mask  # plain attribute: not state, rebuilt from float_channels
        return torch.where(mask, x, xq)  # outlier channels pass in float

    def _quant(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "ste", False):  # block reconstruction: gradients to x and scale
            return Q.fake_quant_ste(
                x, self.scale, self.zero_point, self.bits, symmetric=self.symmetric, axis=self._axis()
            )
        if not self.channels and _fast_ok(x, self.scale):
            bounds = _memo(self, "_vitkit_fast", (self.zero_point,), self._shifted_bounds)
            if bounds is not None:
                return Q.fake_quant_shifted(x, self.scale, *bounds)
        return Q.fake_quant(x, self.scale, self.zero_point, self.bits, symmetric=self.symmetric, axis=self._axis())

    def _shifted_bounds(self) -> tuple[float, float] | None:
        """``(qmin − z, qmax − z)`` for :func:`vitkit.ops.quant.fake_quant_shifted`; None unless z is an integer
        (always, for zero points this package computes)."""
        z = float(self.zero_point.reshape(-1)[0])
        if not z.is_integer() or self.zero_point.numel() != 1:
            return None
        qmin, qmax = Q.qrange(self.bits, self.symmetric)
        return qmin - z, qmax - z


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
        if _fast_ok(x, self.delta) and x.is_contiguous() and x.dtype == self.delta.dtype:
            levels = _memo(
                self, "_vitkit_fast", (self.delta,), lambda: Q.log2_levels(self.delta, self.bits, sqrt2=self.sqrt2)
            )
            return Q.log2_fake_quant_levels(x, self.delta, self.bits, levels, sqrt2=self.sqrt2)
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
        fast = x.dtype == self.delta.dtype == torch.float32 and x.device.type == "cpu" and _fast_ok(x, self.delta)
        if self.mode == "softmax":
            fn = Q.twin_uniform_softmax_fast if fast else Q.twin_uniform_softmax
        else:
            fn = Q.twin_uniform_gelu_fast if fast else Q.twin_uniform_gelu
        return fn(x, self.delta, self.bits)


def make_quantizer(spec: dict[str, Any], where: str = "") -> Quantizer:
    """Build a quantizer from its :meth:`Quantizer.spec` (used by surgery and by the artifact restore hook)."""
    spec = dict(spec)
    kind = spec.pop("kind")
    cls = {"uniform": UniformQuantizer, "log": LogQuantizer, "twin": TwinUniformQuantizer}[kind]
    return cls(where=where, **spec)


class QuantWeightMixin:
    """The layer's weight after ``w_quant``, computed once per weight/scale version (module docstring)."""

    def quant_weight(self) -> torch.Tensor:
        w, w_q = self.weight, getattr(self, "w_quant", None)
        if w_q is None or not w_q.enabled:
            return w
        if not w_q.calibrated or getattr(w_q, "ste", False) or not _fast_ok(w, *w_q.buffers()):
            return w_q(w)  # calibrating, reconstructing, training, tracing: the live path
        return _memo(self, "_vitkit_wq", (w, w_q, *w_q.buffers()), lambda: _share_if_equal(w_q(w), w))


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
    for slot in _SLOTS:
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
