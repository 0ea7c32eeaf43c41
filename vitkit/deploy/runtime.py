"""The one deployment entry point: :func:`deploy` turns a model into a runnable module on a runtime.

``vitkit export`` (:func:`~vitkit.deploy.export.export_model`), the recipe's ``deploy`` section, ``vitkit search``
and the demo all deploy through it; :func:`deploy_int8` is its int8 form.

=================  ===============================================================================================
``ort-auto``       ONNX Runtime; QDQ for a ``ptq`` model, the model's own graph otherwise
``ort-fp32``       ONNX Runtime, the model as it computes (graph ``float``)
``ort-fake``       ONNX Runtime, a ``ptq`` model's fake-quant graph
``ort-qdq``        ONNX Runtime, W8A8 QDQ with vitkit's calibrated scales
``ort-stripped``   ONNX Runtime fp32 of the float model (a ``ptq`` model's quantizers removed)
``ort-int8``       vitkit's int8 deployment: RepQ-ViT reparameterization, outlier input channels float, ORT dynamic
                   int8 (the fastest measured CPU path)
``torch-int8``     the same float model in torch.ao dynamic int8 (fbgemm); writes no file
=================  ===============================================================================================
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..quant.outliers import split_channels
from ..validate import check_choice
from .int8 import OUTLIER_RATIO, REDUCE, int8_float_model, to_torch_dynamic
from .onnx import write_onnx
from .ort import OrtModule
from .trace import OPSET

#: runtime → the ONNX graph :func:`~vitkit.deploy.onnx.write_onnx` writes for it (``torch-int8`` writes none)
RUNTIMES: dict[str, str | None] = {
    "ort-auto": "auto",
    "ort-fp32": "float",
    "ort-fake": "fake",
    "ort-qdq": "qdq",
    "ort-stripped": "stripped",
    "ort-int8": "dynamic",
    "torch-int8": None,
}

#: the file an ONNX runtime's graph is written to unless ``name`` says otherwise
DEFAULT_NAMES = {"dynamic": "model.int8.onnx", "stripped": "model.fp32.onnx"}


def deploy(
    model: nn.Module,
    out_dir: str | Path | None = None,
    *,
    runtime: str = "ort-int8",
    calib: torch.Tensor | None = None,
    example: torch.Tensor | None = None,
    name: str | None = None,
    opset: int = OPSET,
    reduce: str = "mean",
    outliers: float | None = OUTLIER_RATIO,
    threads: int | None = None,
) -> nn.Module:
    """``model`` deployed on ``runtime`` (see the module docstring), as a module ``forward(x) -> logits``.

    ONNX runtimes write ``out_dir / name`` (default ``model.onnx``, ``model.int8.onnx`` for ``ort-int8``,
    ``model.fp32.onnx`` for ``ort-stripped``) and return an :class:`~vitkit.deploy.ort.OrtModule` whose ``graph``
    says which graph was written (``auto`` resolved). ``example``: the batch traced (default one random image);
    ``calib``: calibration images of the int8 runtimes (needed for a float model); ``reduce``, ``outliers``: see
    :func:`~vitkit.deploy.int8.int8_float_model`. Every runtime's result has ``outlier_channels``
    (``{linear name: [input channels kept float]}``, empty outside the int8 runtimes). Tracer warnings are
    silenced. ``model`` is not modified."""
    check_choice(runtime, "deploy runtime", RUNTIMES)
    check_choice(reduce, "reduce", REDUCE)
    graph = RUNTIMES[runtime]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript tracer warnings of the token-reduction patches
        if graph is None:
            float_model = int8_float_model(model, calib, reduce=reduce, outliers=outliers)
            runner = to_torch_dynamic(float_model)
            runner.outlier_channels = split_channels(float_model)
            return runner
        if out_dir is None:
            raise ConfigError(f"deploy runtime {runtime!r} writes an ONNX file: pass out_dir")
        written = write_onnx(
            model,
            Path(out_dir) / (name or DEFAULT_NAMES.get(graph, "model.onnx")),
            graph,
            example=example,
            calib=calib,
            opset=opset,
            reduce=reduce,
            outliers=outliers,
        )
    runner = OrtModule(written.path, threads=threads)
    runner.graph = written.graph
    runner.outlier_channels = written.outlier_channels
    return runner


def deploy_int8(
    model: nn.Module,
    out_dir: str | Path | None,
    *,
    calib: torch.Tensor | None = None,
    backend: str = "ort",
    reduce: str = "mean",
    outliers: float | None = OUTLIER_RATIO,
) -> nn.Module:
    """vitkit's int8 deployment of ``model``: RepQ-ViT reparameterization (already in a ``ptq`` repq/dopq model's
    weights; otherwise computed from ``calib``), outlier input channels kept in float (``outliers``: the ratio to
    the median channel's max, None = off; needs ``calib``), then ORT dynamic int8 (``backend="ort"``, writes
    ``out_dir/model.int8.onnx``) or torch.ao dynamic int8 (``backend="torch"``). Returns a runnable module whose
    ``outlier_channels`` attribute says which input channels stayed float (``{linear name: [channels]}``).
    ``deploy(model, out_dir, runtime="ort-int8" | "torch-int8", ...)``."""
    check_choice(backend, "deploy_int8 backend", ("ort", "torch"))
    return deploy(model, out_dir, runtime=f"{backend}-int8", calib=calib, reduce=reduce, outliers=outliers)
