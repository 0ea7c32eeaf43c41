"""ONNX Runtime: sessions behind a PyTorch-module interface (:class:`OrtModule`) and ORT's dynamic int8
quantizer (:func:`ort_dynamic_int8`).

vitkit's ORT int8 settings: ``quantize_dynamic`` on MatMul only, per-channel int8 weights with ``reduce_range=True``
(7-bit weights, so U8S8 ``vpmaddubsw`` never saturates on a CPU without VNNI). Which runtime is fastest is measured
per machine (``runtime: auto``, :mod:`vitkit.deploy.auto`): on an AVX2-only Zen 3 ``torch._int_mm`` was 20× slower
than fp32 and ORT int8 won; on an AVX-512 + VNNI + BF16 Zen 5 the PyTorch ``_int_mm`` path won (BENCHMARKS.md
"hardware").
"""

from __future__ import annotations

import importlib
import tempfile
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn as nn

from ..errors import DeployError
from ..quant.outliers import OUTLIER_PART
from .trace import first_line


def require(package: str) -> ModuleType:
    """Import ``package`` (``onnx``, ``onnxruntime``, ...) or raise a ``DeployError`` saying how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise DeployError(
            f"{package} is not installed, and this deployment needs it: pip install onnx onnxruntime"
        ) from None


def session_options(threads: int | None = None):
    """vitkit's ORT session options: ``intra_op_num_threads = threads or torch.get_num_threads()``, one inter-op
    thread, all graph optimizations, and ``session.intra_op.allow_spinning = 0`` so that idle ORT threads do not
    steal the CPU from interleaved PyTorch variants."""
    ort = require("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class OrtModule(nn.Module):
    """An ONNX Runtime session behind ``forward(x) -> logits`` so that it can be timed beside PyTorch models
    (CPU execution provider, :func:`session_options`)."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        super().__init__()
        ort = require("onnxruntime")
        self.path = str(path)
        try:
            self.session = ort.InferenceSession(self.path, session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's pybind errors (Fail, InvalidGraph, NoSuchFile, ...)
            raise DeployError(
                f"ONNX Runtime cannot load {self.path}: {first_line(exc)}; re-export it with vitkit export "
                "(default --opset)"
            ) from exc
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)}
        try:
            out = self.session.run(None, feed)
        except Exception as exc:  # onnxruntime's pybind errors (InvalidArgument on a wrong shape, ...)
            raise DeployError(
                f"ONNX Runtime failed on an input of shape {tuple(x.shape)}: {first_line(exc)}; "
                f"pass images of the shape the model was exported for ({self.path})"
            ) from exc
        return torch.from_numpy(out[0])

    @property
    def file_bytes(self) -> int:
        return Path(self.path).stat().st_size


def ort_dynamic_int8(
    src: str | Path, dst: str | Path, *, per_channel: bool = True, reduce_range: bool = True, matmul_only: bool = True
) -> Path:
    """ORT dynamic int8: ``quant_pre_process`` then ``quantize_dynamic`` (QInt8 weights). vitkit's deployment uses
    MatMul only, per-channel, ``reduce_range``; ``matmul_only=False, per_channel=False, reduce_range=False`` are
    ORT's own defaults. MatMuls under an ``outlier`` module (:mod:`vitkit.quant.outliers`) stay float."""
    onnx = require("onnx")
    require("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dst = Path(dst)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            keep_float = [n.name for n in onnx.load(str(pre)).graph.node if f"/{OUTLIER_PART}/" in n.name]
            quantize_dynamic(
                str(pre),
                str(dst),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul"] if matmul_only else None,
                per_channel=per_channel,
                reduce_range=reduce_range,
                nodes_to_exclude=keep_float,
            )
        except Exception as exc:  # ORT's quantization tools raise plain exceptions from deep inside the graph
            raise DeployError(
                f"ONNX Runtime dynamic int8 quantization of {src} failed: {first_line(exc)}; deploy it in fp32 "
                "(runtime 'ort-fp32') or with torch.ao (backend 'torch')"
            ) from exc
    return dst
