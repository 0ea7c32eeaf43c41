"""oneDNN's quantized linear as the int8 kernel of ``torch-w8a8`` (runtime ``torch-w8a8-onednn``): the same W8A8
codes as :class:`~vitkit.deploy.torch_int8.Int8Linear`, with the rescale, bias — and for an MLP's first linear the
GELU and the requantization to the second linear's input codes — done inside the GEMM's epilogue.

With ``torch._int_mm`` the int32 accumulator goes to memory and back before each dequantize / GELU / quantize
pass; those passes are memory-bound and cost about as much as the GEMMs on a 2-core CPU (deit_small: the int8
GEMMs are ~41 % of the compiled forward). ``torch.ops.onednn.qlinear_pointwise`` (the kernel PyTorch's x86 PT2E
quantization lowers to) writes fp32 / bf16 / uint8 directly. It is wrapped in a custom op so that
``torch.compile`` treats it as an opaque kernel (Inductor's own lowering of it requires constant-folded
weights). Unsigned activations × signed weights: exact with VNNI (``vpdpbusd``); without VNNI oneDNN's
``vpmaddubsw`` path can saturate 16-bit pair sums — ``runtime: auto`` scores the result either way, and the
exactness test runs where VNNI is present.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..adapters.timm_mlp import mlp_gelu_chains
from ..errors import DeployError
from .torch_int8 import Int8Linear, LowPrecisionAttention


@torch.library.custom_op("vitkit::onednn_qlinear", mutates_args=())
def onednn_qlinear(
    codes: torch.Tensor,
    x_scale: float,
    x_zero: int,
    packed: torch.Tensor,
    w_scale: torch.Tensor,
    w_zero: torch.Tensor,
    bias: torch.Tensor,
    out_scale: float,
    out_zero: int,
    out_dtype: torch.dtype,
    gelu: bool,
    out_features: int,
) -> torch.Tensor:
    """``[M, in]`` uint8 codes → ``[M, out]`` of ``out_dtype`` (uint8: requantized with ``out_scale``/``out_zero``)."""
    return torch.ops.onednn.qlinear_pointwise(
        codes,
        x_scale,
        x_zero,
        packed,
        w_scale,
        w_zero,
        bias,
        out_scale,
        out_zero,
        None if out_dtype == torch.uint8 else out_dtype,
        "gelu" if gelu else "none",
        [],
        "none" if gelu else "",
    )


@onednn_qlinear.register_fake
def _(codes, x_scale, x_zero, packed, w_scale, w_zero, bias, out_scale, out_zero, out_dtype, gelu, out_features):
    return codes.new_empty((codes.shape[0], out_features), dtype=out_dtype)


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN's quantized linear (x86 builds do)."""
    return hasattr(torch.ops.onednn, "qlinear_pointwise") and hasattr(torch.ops.onednn, "qlinear_prepack")


class OneDNNInt8Linear(nn.Module):
    """A static :class:`Int8Linear` (asymmetric uint8 activations, symmetric weights) on oneDNN. ``out_dtype``:
    fp32, bf16, or uint8 with ``out_quant = (scale, zero)``; ``gelu`` applies exact GELU before the output. An
    input already in uint8 codes (the previous layer requantized it) is used as it is."""

    def __init__(
        self,
        layer: Int8Linear,
        *,
        out_dtype: torch.dtype = torch.float32,
        gelu: bool = False,
        out_quant: tuple[float, int] | None = None,
    ) -> None:
        super().__init__()
        if not layer.static or layer.has_w_shift or layer.act_off != 128 or (layer.act_min, layer.act_max) != (0, 255):
            raise DeployError("oneDNN int8 needs static 8-bit asymmetric activations and symmetric weights")
        self.register_buffer("packed", torch.ops.onednn.qlinear_prepack(layer.w8.t().contiguous(), None))
        self.x_scale, self.x_zero = float(layer.act_scale), int(round(float(layer.act_zero)))
        self.register_buffer("w_scale", layer.w_scale.clone())
        self.register_buffer("w_zero", torch.zeros(layer.out_features, dtype=torch.int64))
        self.register_buffer("bias", layer.bias.clone())
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.out_dtype, self.gelu = out_dtype, gelu
        self.out_scale, self.out_zero = out_quant if out_quant is not None else (1.0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        if x2.dtype != torch.uint8:
            x2 = torch.clamp(torch.round(x2.float() / self.x_scale) + self.x_zero, 0, 255).to(torch.uint8)
        y = onednn_qlinear(
            x2,
            self.x_scale,
            self.x_zero,
            self.packed,
            self.w_scale,
            self.w_zero,
            self.bias,
            self.out_scale,
            self.out_zero,
            self.out_dtype,
            self.gelu,
            self.out_features,
        )
        return y.reshape(*x.shape[:-1], self.out_features)


def to_onednn_(model: nn.Module, *, qkv_dtype: torch.dtype = torch.float32) -> int:
    """Every static :class:`Int8Linear` of ``model`` → :class:`OneDNNInt8Linear`, in place; an MLP's
    ``fc1 → GELU → fc2`` (:func:`~vitkit.adapters.timm_mlp.mlp_gelu_chains`) fused so that ``fc1`` emits
    ``fc2``'s uint8 input codes; the qkv projections emit ``qkv_dtype`` (bf16 when attention runs in bf16).
    Returns how many linears moved."""
    if not onednn_available():
        raise DeployError("this PyTorch build has no oneDNN quantized linear: use runtime 'torch-w8a8'")
    modules = dict(model.named_modules())
    done: set[str] = set()
    for fc1, act, fc2 in mlp_gelu_chains(model):
        a, b = modules.get(fc1), modules.get(fc2)
        if not (_eligible(a) and _eligible(b)):
            continue
        out_quant = (float(b.act_scale), int(round(float(b.act_zero))))
        model.set_submodule(fc1, OneDNNInt8Linear(a, out_dtype=torch.uint8, gelu=True, out_quant=out_quant))
        model.set_submodule(act, nn.Identity())
        model.set_submodule(fc2, OneDNNInt8Linear(b))
        done |= {fc1, fc2}
    # only a lowered attention core (bf16 matmuls) takes its qkv projection in qkv_dtype; others stay fp32
    lowered = {f"{n}.qkv" for n, m in modules.items() if isinstance(m, LowPrecisionAttention)}
    for name, m in modules.items():
        if name not in done and _eligible(m):
            qkv = name in lowered
            model.set_submodule(name, OneDNNInt8Linear(m, out_dtype=qkv_dtype if qkv else torch.float32))
            done.add(name)
    return len(done)


def _eligible(m) -> bool:
    return isinstance(m, Int8Linear) and m.static and not m.has_w_shift and m.act_off == 128
