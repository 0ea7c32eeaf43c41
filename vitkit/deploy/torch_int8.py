"""PyTorch-native W8A8: every Linear on ``torch._int_mm`` (int8 × int8 → int32), runtime ``torch-w8a8``.

An 8-bit uniform quantizer of the input (scale ``s_a``, zero point ``z_a``) and one of the weight (per output
channel ``s_w``, ``z_w``) turn a Linear into an integer GEMM plus one rescale:

    y_j = s_a · s_w,j · Σ_k (c_a,k − z_a)(c_w,jk − z_w,j) + b_j

(the fake-quant model's ``F.linear(fq(x), fq(W), b)`` in exact arithmetic; the same accumulator as the integer-only
path's GEMM, :mod:`vitkit.quant.integer`). ``torch._int_mm`` takes signed int8 on both sides, so asymmetric codes
``[0, 255]`` are stored shifted by 128 and the shift's terms are folded into per-output constants (and a row sum
of the activation codes when the weights are asymmetric) — the accumulator stays exact.

Two activation schemes:

* ``static`` — the calibrated per-tensor quantizers of a ``ptq`` model (RepQ-ViT: Li et al., ICCV 2023, whose
  reparameterization makes per-tensor scales work after LayerNorm); codes equal the fake-quant model's, so its
  logits agree within one accumulator LSB per layer (tested);
  — or, for a float model, per-tensor 8-bit scales calibrated here on ``calib`` (``search``: minmax, percentile,
  quantile, mse of :func:`vitkit.ops.quant.search_uniform`) after the RepQ-ViT fold and with outlier input
  channels kept in float (:func:`~vitkit.deploy.int8.int8_float_model`); weights per channel, symmetric max-abs;
* ``dynamic`` — symmetric per-token int8 scales computed at each call (``s_a,m = max_k |x_mk| / 127``) on the same
  folded float model: no activation calibration, but a row reduction before every GEMM (which Inductor fuses by
  recomputing the producer, e.g. GELU, twice).

Attention's two matmuls are not Linears; ``attention="bf16"`` runs them in bfloat16 (explicit ``q·kᵀ`` and
``attn·v``), ``"fp32"`` leaves the host's attention as it is. Eager, ``_int_mm`` plus the separate quantize and
rescale ops is not faster than fp32 MKL; under ``torch.compile`` Inductor fuses them into neighbouring kernels
(BENCHMARKS.md "hardware" has the measured figures per machine — whether this path wins is measured there and by
``runtime: auto``, not assumed).
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn as nn

from ..adapters.protocol import adapter_for
from ..adapters.timm_vit_layers import ExplicitAttention
from ..errors import DeployError, UnsupportedModelError
from ..ops import quant as Q
from ..quant.modules import quantizers, unpatch_module
from ..quant.outliers import OUTLIER_PART, OutlierSplitLinear, split_channels
from ..quant.quantizer import Quantizer, UniformQuantizer
from ..validate import check_choice
from .int8 import OUTLIER_RATIO, int8_float_model

_log = logging.getLogger(__name__)

#: activation schemes of :func:`to_torch_w8a8`
ACTIVATIONS = ("dynamic", "static")
#: dtypes the attention matmuls can run in
ATTENTION = ("fp32", "bf16")

_SHIFT = 128  # asymmetric 8-bit codes [0, 255] − 128 → int8


def int_mm_available() -> bool:
    """Whether ``torch._int_mm`` runs on this CPU build (a tiny probe; cached)."""
    if "ok" not in _PROBE:
        try:
            a = torch.ones(32, 8, dtype=torch.int8)
            _PROBE["ok"] = bool(torch._int_mm(a, a.t().contiguous()).sum() == 32 * 32 * 8)
        except (RuntimeError, AttributeError):
            _PROBE["ok"] = False
    return _PROBE["ok"]


_PROBE: dict[str, bool] = {}


class Int8Linear(nn.Module):
    """A Linear as ``torch._int_mm`` over int8 codes (module docstring). Buffers: ``w8`` ``[in, out]`` int8
    (codes − offset), ``acc_const`` ``[out]`` int32 (the shifts' constant terms), ``w_shift`` ``[out]`` (weight
    zero-point terms multiplying the activation row sum; all zero for symmetric weights), ``w_scale`` ``[out]``,
    ``bias`` ``[out]``, and for static activations the 0-d buffers ``act_scale``, ``act_zero`` (tensors, so that
    ``torch.compile`` does not specialize — and recompile — per layer); dynamic layers have ``act_scale = None``."""

    def __init__(
        self,
        codes: torch.Tensor,
        w_zero: torch.Tensor,
        w_scale: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        w_symmetric: bool,
        act_scale: float | None = None,
        act_zero: float = 0.0,
        act_bits: int = 8,
        act_symmetric: bool = False,
    ) -> None:
        super().__init__()
        out_f, in_f = codes.shape
        self.in_features, self.out_features = int(in_f), int(out_f)  # as nn.Linear names them (adapters read them)
        w_off = 0 if w_symmetric else _SHIFT
        w8 = (codes - w_off).round().to(torch.int32)
        d_w = (w_off - w_zero.double()).round().to(torch.int32)  # (c_w − z_w) = w8 + d_w
        self.static = act_scale is not None
        self.act_min, self.act_max = Q.qrange(act_bits, act_symmetric) if self.static else (-127, 127)
        self.act_off = 0 if (act_symmetric or not self.static) else _SHIFT
        d_a = int(round(self.act_off - float(act_zero))) if self.static else 0  # (c_a − z_a) = a8 + d_a
        if self.static:
            self.register_buffer("act_scale", torch.tensor(float(act_scale)))
            self.register_buffer("act_zero", torch.tensor(float(act_zero)))
        else:
            self.act_scale = self.act_zero = None
        const = d_a * w8.sum(1) + in_f * d_a * d_w  # [out]
        self.register_buffer("w8", w8.to(torch.int8).t().contiguous())
        self.register_buffer("acc_const", const.to(torch.int32))
        self.register_buffer("w_shift", d_w.to(torch.int32))
        self.has_w_shift = bool(d_w.any())
        self.register_buffer("w_scale", w_scale.float().reshape(-1))
        self.register_buffer("bias", (bias if bias is not None else torch.zeros(out_f)).detach().float())
        self.in_features, self.out_features = in_f, out_f

    @classmethod
    def from_float(cls, linear: nn.Linear) -> Int8Linear:
        """Dynamic per-token activations, symmetric per-channel max-abs int8 weights of ``linear``."""
        w = linear.weight.detach().float()
        s_w = (w.abs().amax(1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
        codes = torch.round(w / s_w[:, None]).clamp(-127, 127)
        return cls(codes, torch.zeros(len(s_w)), s_w, linear.bias, w_symmetric=True)

    def calibrated(self, x: torch.Tensor, search: str = "minmax") -> Int8Linear:
        """This dynamic layer made static: a per-tensor asymmetric 8-bit input scale searched on ``x``."""
        s_a, z_a = Q.search_uniform(x.reshape(-1, self.in_features), 8, method=search)
        codes = self.w8.t().float()
        return Int8Linear(
            codes,
            torch.zeros(self.out_features),
            self.w_scale,
            self.bias,
            w_symmetric=True,
            act_scale=float(s_a.reshape(-1)[0]),
            act_zero=float(z_a.reshape(-1)[0]),
        )

    @classmethod
    def from_quantized(cls, linear: nn.Linear) -> Int8Linear:
        """Static: a ``ptq`` QuantLinear's calibrated per-tensor input and per-channel weight quantizers."""
        a_q, w_q = getattr(linear, "a_quant", None), getattr(linear, "w_quant", None)
        for q, what in ((a_q, "input"), (w_q, "weight")):
            if not isinstance(q, UniformQuantizer) or q.bits > 8:
                raise UnsupportedModelError(
                    f"torch-w8a8 needs ≤8-bit uniform {what} quantizers, and this Linear has {type(q).__name__} "
                    f"({getattr(q, 'bits', '-')} bits): quantize with ptq method repq, dopq, minmax or percentile"
                )
        if a_q.channels:
            raise UnsupportedModelError("torch-w8a8 static needs per-tensor activations (RepQ-reparameterized ptq)")
        w = linear.weight.detach().float()
        s_w, z_w = w_q.scale.reshape(-1).float(), w_q.zero_point.reshape(-1).float()
        if s_w.numel() == 1:
            s_w, z_w = s_w.expand(w.shape[0]), z_w.expand(w.shape[0])
        codes = Q.quantize(w, s_w, z_w, w_q.bits, symmetric=w_q.symmetric, axis=0)
        return cls(
            codes,
            z_w,
            s_w,
            linear.bias,
            w_symmetric=w_q.symmetric,
            act_scale=float(a_q.scale.reshape(-1)[0]),
            act_zero=float(a_q.zero_point.reshape(-1)[0]),
            act_bits=a_q.bits,
            act_symmetric=a_q.symmetric,
        )

    def codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a8 [M, in] int8, per-row activation scale [M, 1] or a 0-d tensor)`` of ``x`` flattened to rows."""
        x2 = x.reshape(-1, self.in_features).float()
        if self.static:
            q = torch.clamp(torch.round(x2 / self.act_scale) + self.act_zero, self.act_min, self.act_max)
            return (q - self.act_off).to(torch.int8), self.act_scale
        s = (x2.abs().amax(1, keepdim=True) / 127).clamp_min(torch.finfo(torch.float32).tiny)
        return torch.round(x2 / s).clamp(-127, 127).to(torch.int8), s

    def accumulate(self, a8: torch.Tensor) -> torch.Tensor:
        """``Σ_k (c_a − z_a)(c_w − z_w)`` as int32 ``[M, out]`` from the shifted codes ``a8``."""
        acc = torch._int_mm(a8, self.w8) + self.acc_const
        if self.has_w_shift:
            acc = acc + a8.sum(1, keepdim=True, dtype=torch.int32) * self.w_shift
        return acc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a8, s_a = self.codes(x)
        y = self.accumulate(a8).float() * (s_a * self.w_scale) + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        act = f"static s={float(self.act_scale):.4g} z={float(self.act_zero):g}" if self.static else "dynamic per-token"
        return f"in={self.in_features}, out={self.out_features}, act={act}"


class LowPrecisionAttention(ExplicitAttention):
    """The host attention with explicit matmuls whose inputs (``q``, ``k``, softmax map, ``v``) are cast to
    ``compute_dtype`` and whose output returns to fp32 before the output projection."""

    compute_dtype = torch.bfloat16

    def site(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return x.float() if name == "out" else x.to(self.compute_dtype)


#: ``torch._dynamo``'s per-code-object recompile limit while vitkit compiles runners: every model instance and
#: input shape is one more compile of the same ``forward``, and past the default (8) dynamo silently runs eager
RECOMPILE_LIMIT = 64


def compile_runner(model: nn.Module) -> nn.Module:
    """``torch.compile(model)`` with dynamo's recompile limit raised to :data:`RECOMPILE_LIMIT` (a process that
    deploys or measures several models — ``runtime: auto``, benchmarks — would otherwise fall back to eager)."""
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 8 * RECOMPILE_LIMIT)
    return torch.compile(model)


def _linear_names(model: nn.Module) -> list[str]:
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and OUTLIER_PART not in n.split(".") and not isinstance(m, Int8Linear)
    ]


def _static_model(model: nn.Module) -> nn.Module:
    """A ``ptq`` model's Linears → static :class:`Int8Linear` (float-channel inputs split off, as simulated)."""
    out = copy.deepcopy(model).eval()
    linears = {n: m for n, m in out.named_modules() if isinstance(m, nn.Linear) and getattr(m, "w_quant", None)}
    if not linears:
        raise DeployError("activations 'static' need a ptq model (calibrated quantizers): run a ptq step first")
    for name, lin in linears.items():
        int8 = Int8Linear.from_quantized(lin)
        kept = list(getattr(lin.a_quant, "float_channels", None) or [])
        w_fq = lin.quant_weight().detach()
        unpatch_module(lin)
        if kept:  # fake-quant passes these channels in float against the fake-quantized weight columns
            split = OutlierSplitLinear(lin, torch.tensor(kept))
            split.outlier.weight.data.copy_(w_fq[:, kept])
            split.main = int8
            int8 = split
        out.set_submodule(name, int8)
    for m in list(out.modules()):  # the rest (patch embedding, attention) runs in float
        if any(isinstance(c, Quantizer) for c in m.children()):
            unpatch_module(m)
    return out


@torch.no_grad()
def _calibrate_static_(model: nn.Module, calib: torch.Tensor, search: str) -> None:
    """Every dynamic :class:`Int8Linear` → static, its input scale searched on one forward over ``calib``."""
    inputs: dict[str, torch.Tensor] = {}
    layers = {n: m for n, m in model.named_modules() if isinstance(m, Int8Linear) and not m.static}

    def hook_for(name: str):
        def hook(mod: nn.Module, args: tuple) -> None:
            inputs[name] = args[0].detach()

        return hook

    hooks = [m.register_forward_pre_hook(hook_for(n)) for n, m in layers.items()]
    try:
        model(calib)  # dynamic int8 upstream: each layer's scale sees inputs close to what it will get
    finally:
        for h in hooks:
            h.remove()
    for name, layer in layers.items():
        model.set_submodule(name, layer.calibrated(inputs[name], search))


def _attention_to(model: nn.Module, dtype: str) -> int:
    """Swap the host's plain attention modules to :class:`LowPrecisionAttention`; returns how many."""
    if dtype == "fp32":
        return 0
    count = 0
    for core in adapter_for(model).attention_cores(model):
        mod = model.get_submodule(core.name)
        if type(mod) in (ExplicitAttention.host_class, ExplicitAttention):
            mod.__class__ = LowPrecisionAttention
            count += 1
        else:
            _log.info("%s is a %s: its matmuls stay in fp32", core.name, type(mod).__name__)
    return count


def to_torch_w8a8(
    model: nn.Module,
    calib: torch.Tensor | None = None,
    *,
    activations: str = "dynamic",
    attention: str = "fp32",
    outliers: float | None = OUTLIER_RATIO,
    reduce: str = "mean",
    search: str = "minmax",
    compile: bool = True,
) -> nn.Module:
    """``model`` with every Linear on ``torch._int_mm`` (module docstring). ``activations="static"``: a ``ptq``
    model's own scales, or per-tensor scales searched (``search``) on ``calib`` for a float model;
    ``"dynamic"``: per-token scales at run time. A float model is RepQ-folded with outlier inputs split off first
    (needs ``calib``); a ``ptq`` model's reparameterized weights are used as they are. ``compile``: wrap in
    ``torch.compile`` (compiles on the first call). The result has ``outlier_channels``. ``model`` is not
    modified."""
    check_choice(activations, "activations", ACTIVATIONS)
    check_choice(attention, "attention", ATTENTION)
    check_choice(search, "search", Q.SEARCH_METHODS)
    if not int_mm_available():
        raise DeployError("torch._int_mm does not run in this PyTorch build: deploy with runtime 'ort-int8'")
    if activations == "static" and quantizers(model):
        runner = _static_model(model)
    else:
        runner = int8_float_model(model, calib, reduce=reduce, outliers=outliers)
        for name in _linear_names(runner):
            runner.set_submodule(name, Int8Linear.from_float(runner.get_submodule(name)))
        if activations == "static":
            _calibrate_static_(runner, calib, search)
    n_attn = _attention_to(runner, attention)
    channels = split_channels(runner)
    _log.info("torch-w8a8: %d int8 linears, %d bf16 attention cores", len(_int8s(runner)), n_attn)
    if compile:
        runner = compile_runner(runner)
    runner.outlier_channels = channels
    return runner


def _int8s(model: nn.Module) -> list[Int8Linear]:
    return [m for m in model.modules() if isinstance(m, Int8Linear)]
