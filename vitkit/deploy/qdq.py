"""ONNX QDQ export of a calibrated ``ptq`` model with vitkit's own scales: :func:`export_qdq`.

After RepQ-ViT's reparameterization every activation quantizer is per-tensor and every weight quantizer
per-output-channel — exactly the ONNX QDQ format (``QuantizeLinear``/``DequantizeLinear``, opset 13+):

* weights are stored as **uint8/int8 initializers** (our codes) with per-channel scale/zero point, followed by
  ``DequantizeLinear(axis=0)``: the file holds 1 byte per weight;
* each quantized linear's input, both inputs of ``q·kᵀ`` and ``v`` get a per-tensor ``QuantizeLinear →
  DequantizeLinear`` pair with the calibrated scale/zero point, so ONNX Runtime may fuse them into integer
  kernels (``QLinearMatMul`` / ``MatMulIntegerToFloat``);
* the log√2 / log2 post-softmax quantizer has no ONNX operator: it is *emulated* with float ops (Log, Round,
  Clip, Pow) so that the exported model computes what the fake-quant model does; a uniform post-softmax
  quantizer becomes a QDQ pair.

Only 8-bit quantizers map onto ONNX's uint8/int8 (W8A8); lower bit widths, per-channel activations (not
reparameterized), PTQ4ViT's twin-uniform quantizers and input channels kept float raise ``ConfigError`` /
``UnsupportedModelError``. The parity with the fake-quant model is measured in ``tests/quant/test_export.py`` and
BENCHMARKS.md.
"""

from __future__ import annotations

import copy
import io
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .._io import atomic_write_bytes
from ..adapters.protocol import adapter_for
from ..errors import ConfigError, DeployError, UnsupportedModelError
from ..ops import quant as Q
from ..quant.modules import float_state_dict, quantizers
from ..quant.quantizer import LogQuantizer, Quantizer, UniformQuantizer
from .ort import require
from .trace import OPSET, first_line, trace_onnx

_log = logging.getLogger(__name__)


class _QDQUniform(UniformQuantizer):
    """Export form: ``torch.fake_quantize_per_*_affine`` (exported as QuantizeLinear + DequantizeLinear)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qmin, qmax = _onnx_range(self)
        if self.channels:
            z = self.zero_point.round().to(torch.int32)
            return torch.fake_quantize_per_channel_affine(x, self.scale.float(), z, self.axis % x.dim(), qmin, qmax)
        return torch.fake_quantize_per_tensor_affine(
            x, float(self.scale.reshape(-1)[0]), int(round(float(self.zero_point.reshape(-1)[0]))), qmin, qmax
        )


class _EmulatedLog(LogQuantizer):
    """Export form of the log quantizer: the fake-quant formula in float ONNX ops (no ONNX operator exists)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Q.log2_fake_quant(x, self.delta, self.bits, sqrt2=self.sqrt2)


def _onnx_range(q: UniformQuantizer) -> tuple[int, int]:
    """ONNX's uint8 (asymmetric) or int8 (symmetric; the restricted ±127 codes fit) range."""
    return (-128, 127) if q.symmetric else (0, 255)


def _check_exportable(model: nn.Module) -> None:
    qs = quantizers(model)
    if not qs:
        raise UnsupportedModelError("export_qdq needs a ptq-calibrated model: apply PTQConfig(...) first")
    for name, q in qs.items():
        if not isinstance(q, UniformQuantizer | LogQuantizer):
            raise UnsupportedModelError(
                f"{name} is a {type(q).__name__}, which has no ONNX QDQ form: use ptq method repq, dopq, minmax "
                "or percentile"
            )
        if isinstance(q, UniformQuantizer):
            if q.float_channels:
                raise UnsupportedModelError(
                    f"{name} keeps input channels {q.float_channels} in float (PTQConfig.outlier_ratio), which ONNX "
                    "QDQ cannot express: export with deploy_int8 / --quant dynamic, or quantize without outlier_ratio"
                )
            if q.bits != 8:
                raise ConfigError(f"{name} has {q.bits} bits: ONNX QDQ export needs 8-bit quantizers (W8A8)")
            if q.channels and not name.endswith("w_quant"):
                raise UnsupportedModelError(
                    f"{name} is a per-channel activation quantizer: QDQ needs per-tensor activations "
                    "(use ptq method repq or dopq, whose reparameterization makes them per-tensor)"
                )


def _qdq_copy(model: nn.Module) -> nn.Module:
    out = copy.deepcopy(model).eval()
    for q in quantizers(out).values():
        if isinstance(q, UniformQuantizer):
            q.__class__ = _QDQUniform
        elif isinstance(q, LogQuantizer):
            q.__class__ = _EmulatedLog
    return out


def _weight_qparams(model: nn.Module) -> dict[str, tuple[np.ndarray, np.ndarray, type]]:
    """``{weight initializer name: (scale [C], zero point [C], numpy dtype)}`` of every quantized weight."""
    out = {}
    for name, mod in model.named_modules():
        w_q = getattr(mod, "w_quant", None)
        if isinstance(w_q, UniformQuantizer):
            dtype = np.int8 if w_q.symmetric else np.uint8
            out[f"{name}.weight"] = (w_q.scale.double().numpy(), w_q.zero_point.round().numpy(), dtype)
    return out


def _fold_weight_quantize(onnx_model, qparams: dict) -> int:
    """Replace ``QuantizeLinear(float weight initializer)`` by the integer initializer of our codes, so that the
    file stores weights in 1 byte. Returns the number of folded weights."""
    from onnx import numpy_helper

    graph = onnx_model.graph
    inits = {i.name: i for i in graph.initializer}
    folded, keep = 0, []
    for node in graph.node:
        name = node.input[0] if node.op_type == "QuantizeLinear" else None
        if name in inits and name in qparams:
            w = numpy_helper.to_array(inits[name]).astype(np.float64)
            s, z, dtype = qparams[name]
            shape = [-1] + [1] * (w.ndim - 1)  # per output channel (axis 0)
            info = np.iinfo(dtype)
            codes = np.clip(np.rint(w / s.reshape(shape)) + z.reshape(shape), info.min, info.max).astype(dtype)
            graph.initializer.append(numpy_helper.from_array(codes, node.output[0]))
            folded += 1
            continue
        keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    return folded


def export_qdq(model: nn.Module, path: str | Path, example: torch.Tensor | None = None, *, opset: int = OPSET) -> Path:
    """Write ``model`` (W8A8 ``ptq``, RepQ-reparameterized) as an ONNX QDQ file at ``path`` (atomic write) with
    vitkit's calibrated scales; ``example``: an input batch for tracing (default: one random image of the
    model's size). Traced by :func:`~vitkit.deploy.trace.trace_onnx` (dynamic batch). Returns the path. The input
    model is unchanged."""
    onnx = require("onnx")
    _check_exportable(model)
    if any(isinstance(m, Quantizer) and not m.calibrated for m in model.modules()):
        raise ConfigError("the model holds uncalibrated quantizers: run ptq calibration before export_qdq")
    want = adapter_for(model).input_size(model)
    if example is None:
        example = torch.randn(1, *want)
    if example.dim() != 4 or tuple(example.shape[1:]) != want:
        dims = ", ".join(map(str, want))
        raise ConfigError(f"example has shape {tuple(example.shape)} but the model expects [n, {dims}]")
    qmodel = _qdq_copy(model)
    buf = io.BytesIO()
    with torch.no_grad(), float_state_dict():
        trace_onnx(qmodel, example.float(), buf, opset=opset)
    onnx_model = onnx.load_from_string(buf.getvalue())
    n = _fold_weight_quantize(onnx_model, _weight_qparams(model))
    try:
        onnx.checker.check_model(onnx_model)
    except onnx.checker.ValidationError as exc:
        raise DeployError(f"the QDQ graph is not valid ONNX: {first_line(exc)}; export --quant fake") from exc
    _log.info("export_qdq: %d weights stored as integer codes", n)
    return atomic_write_bytes(path, onnx_model.SerializeToString())
