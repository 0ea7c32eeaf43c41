"""Every ONNX file vitkit writes: :func:`write_onnx`, one function for the five graphs a model can become.

============  ==================================================================================================
``float``     the model as it computes, traced (a transform's static graph, ``vitkit_onnx_module``, when it offers
              one; a ``ptq`` model's fake-quant graph)
``fake``      the same, for a ``ptq`` model only: its fake-quant graph (exact parity, float speed)
``qdq``       a W8A8 ``ptq`` model with vitkit's calibrated scales as QuantizeLinear/DequantizeLinear pairs and
              integer weights (:func:`~vitkit.deploy.qdq.export_qdq`)
``stripped``  the float model without its quantizers (a ``ptq`` model's folded weights), fp32
``dynamic``   the int8 deployment: the float model an int8 runtime should quantize
              (:func:`~vitkit.deploy.int8.int8_float_model`: RepQ-ViT reparameterization, outlier input channels
              float), then ORT dynamic int8 (:func:`~vitkit.deploy.ort.ort_dynamic_int8`)
============  ==================================================================================================

``auto`` picks ``qdq`` for a ``ptq`` model and ``float`` otherwise. Every graph is traced by
:func:`~vitkit.deploy.trace.trace_onnx` and written atomically.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .._io import atomic_write_bytes
from ..adapters.protocol import adapter_for
from ..errors import ConfigError
from ..quant.modules import float_state_dict, quantizers
from ..quant.outliers import split_channels
from ..validate import check_choice
from .int8 import OUTLIER_RATIO, float_model_of, int8_float_model
from .ort import ort_dynamic_int8
from .qdq import export_qdq
from .trace import OPSET, onnx_graph_module, trace_onnx

GRAPHS = ("auto", "float", "fake", "qdq", "stripped", "dynamic")


@dataclass
class OnnxFile:
    """What :func:`write_onnx` wrote: the file, the graph kind actually used (``auto`` resolved) and, for the
    ``dynamic`` graph, the input channels kept float (``{linear name: [channels]}``)."""

    path: Path
    graph: str
    outlier_channels: dict[str, list[int]] = field(default_factory=dict)


def resolve_graph(model: nn.Module, graph: str) -> str:
    """``graph`` with ``auto`` resolved; a quantized-only graph asked of a float model is a ``ConfigError``."""
    check_choice(graph, "ONNX graph (--quant)", GRAPHS)
    quantized = bool(quantizers(model))
    if graph == "auto":
        return "qdq" if quantized else "float"
    if not quantized and graph in ("qdq", "fake"):
        raise ConfigError(f"--quant {graph} needs a quantized (ptq) artifact; this model is float: use --quant auto")
    return graph


def _example(model: nn.Module, example: torch.Tensor | None) -> torch.Tensor:
    return torch.randn(1, *adapter_for(model).input_size(model)) if example is None else example


def write_onnx(
    model: nn.Module,
    dst: str | Path,
    graph: str = "auto",
    *,
    example: torch.Tensor | None = None,
    calib: torch.Tensor | None = None,
    opset: int = OPSET,
    reduce: str = "mean",
    outliers: float | None = OUTLIER_RATIO,
) -> OnnxFile:
    """Write the ``graph`` (see the module docstring) of ``model`` to ``dst`` atomically. ``example``: the batch
    to trace (default: one random image of the model's size); ``calib``: calibration images of the ``dynamic``
    graph (RepQ reparameterization of a float model, outlier channel detection; ``reduce`` / ``outliers`` as in
    :func:`~vitkit.deploy.int8.int8_float_model`). ``model`` is not modified (a float model is put in eval mode)."""
    graph = resolve_graph(model, graph)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    kept: dict[str, list[int]] = {}
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        out = Path(tmp) / "model.onnx"
        if graph == "qdq":
            export_qdq(model, out, example, opset=opset)
        elif graph in ("float", "fake"):
            with float_state_dict():  # a ptq model's state dict holds packed codes, which the tracer cannot read
                trace_onnx(onnx_graph_module(model).eval(), _example(model, example), out, opset=opset)
        elif graph == "stripped":
            float_model = float_model_of(model)
            trace_onnx(float_model, _example(float_model, example), out, opset=opset)
        else:  # dynamic
            float_model = int8_float_model(model, calib, reduce=reduce, outliers=outliers)
            fp32 = trace_onnx(float_model, _example(float_model, example), Path(tmp) / "fp32.onnx", opset=opset)
            ort_dynamic_int8(fp32, out)
            kept = split_channels(float_model)
        atomic_write_bytes(dst, out.read_bytes())
    return OnnxFile(dst, graph, kept)


def export_onnx(model: nn.Module, path: str | Path, *, batch: int = 1, opset: int = OPSET) -> Path:
    """The fp32 graph of the float model (a ``ptq`` model's quantizers stripped), traced on ``batch`` random
    images: what the int8 runtimes start from, and the ORT fp32 baseline. ``write_onnx(model, path, "stripped")``."""
    example = torch.randn(batch, *adapter_for(model).input_size(model))
    return write_onnx(model, path, "stripped", example=example, opset=opset).path
