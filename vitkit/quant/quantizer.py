"""Fake-quant quantizers: uniform (per tensor or per channel), log2 / log√2 and PTQ4ViT's twin uniform, with their
parameters as buffers; :func:`make_quantizer` builds one from its :meth:`~Quantizer.spec`.

A quantizer is *calibrating* until it has seen one batch: on that forward it fits its parameters to its
input (with every upstream quantizer already active — RepQ-ViT's sequential calibration) and from then on
quantizes. The quantized layers that hold them are in :mod:`vitkit.quant.modules`.

Evaluation speed. Activation quantizers use the fast paths of :mod:`vitkit.ops.quant` (same values, fewer
passes) when no gradient is needed, with their constant tables cached (:func:`cached`: recomputed whenever a
scale or zero point is replaced or changed in place — the tensors' version counters move). A change made
through ``tensor.data`` bypasses version counters: call :func:`clear_quant_cache` after one. Inside
:func:`reference_quant` everything is recomputed with the reference formulas on every forward — the readable
fallback the tests compare the fast path against with ``torch.equal``.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

import torch
import torch.nn as nn

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


def fast_path_ok(*tensors: torch.Tensor) -> bool:
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


def cached(owner: nn.Module, slot: str, objs: tuple, make) -> Any:
    """``make()``, cached on ``owner`` under ``slot`` until one of ``objs`` is replaced or (tensors) changed."""
    memo = owner.__dict__.get(slot)
    if memo is not None and memo.valid(objs):
        return memo.value
    with torch.inference_mode(False), torch.no_grad():  # a plain tensor, usable outside inference mode too
        value = make()
    owner.__dict__[slot] = _Memo(objs, value)
    return value


CACHE_SLOTS = ("_vitkit_wq", "_vitkit_fast")


def clear_quant_cache(model: nn.Module) -> None:
    """Drop every cached fake-quantized weight and quantizer table (needed only after changes through
    ``tensor.data``, which no version counter sees; everything else invalidates itself)."""
    for m in model.modules():
        for slot in CACHE_SLOTS:
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
        if not self.channels and fast_path_ok(x, self.scale):
            bounds = cached(self, "_vitkit_fast", (self.zero_point,), self._shifted_bounds)
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
        if fast_path_ok(x, self.delta) and x.is_contiguous() and x.dtype == self.delta.dtype:
            levels = cached(
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
        fast = x.dtype == self.delta.dtype == torch.float32 and x.device.type == "cpu" and fast_path_ok(x, self.delta)
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
