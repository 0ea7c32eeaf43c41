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
``torch-fp32``     the model itself, PyTorch eager (``auto``'s reference); writes no file
``torch-compile``  ``torch.compile`` of the model
``torch-bf16``     the model in bfloat16 (:mod:`vitkit.quant.precision`), PyTorch eager
``torch-w8a8``     every Linear on ``torch._int_mm`` with static RepQ-ViT scales, ``torch.compile``
                   (:mod:`vitkit.deploy.torch_int8`); ``torch-w8a8-bf16``: attention matmuls in bf16 too;
                   ``torch-w8a8-onednn``: the latter on oneDNN's quantized linear, rescale / GELU / requantize
                   in the GEMM epilogue (:mod:`vitkit.deploy.onednn_int8`)
``auto``           each candidate above measured here, on this model: the fastest within ``max_drop`` points of
                   the fp32 model's top-1 (:mod:`vitkit.deploy.auto`); needs evaluation images
=================  ===============================================================================================
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..quant.outliers import split_channels
from ..validate import check_choice
from .auto import choose_runtime, keep_winner
from .int8 import OUTLIER_RATIO, REDUCE, int8_float_model, to_torch_dynamic
from .onednn_int8 import to_onednn_
from .onnx import write_onnx
from .ort import OrtModule
from .torch_int8 import compile_runner, to_torch_w8a8
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
    "torch-fp32": None,
    "torch-compile": None,
    "torch-bf16": None,
    "torch-w8a8": None,
    "torch-w8a8-bf16": None,
    "torch-w8a8-onednn": None,
    "auto": None,
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
    data: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    max_drop: float = 1.0,
    candidates: tuple[str, ...] | None = None,
    cache: bool = True,
) -> nn.Module:
    """``model`` deployed on ``runtime`` (see the module docstring), as a module ``forward(x) -> logits``.

    ONNX runtimes write ``out_dir / name`` (default ``model.onnx``, ``model.int8.onnx`` for ``ort-int8``,
    ``model.fp32.onnx`` for ``ort-stripped``) and return an :class:`~vitkit.deploy.ort.OrtModule` whose ``graph``
    says which graph was written (``auto`` resolved). ``example``: the batch traced (default one random image);
    ``calib``: calibration images of the int8 runtimes (needed for a float model); ``reduce``, ``outliers``: see
    :func:`~vitkit.deploy.int8.int8_float_model`. Every runtime's result has ``outlier_channels``
    (``{linear name: [input channels kept float]}``, empty outside the int8 runtimes). Tracer warnings are
    silenced. ``model`` is not modified.

    ``auto``: ``data = (images, labels or None)`` are the evaluation images the candidates are scored on
    (``calib`` defaults to their first 32), ``max_drop`` the budget in points, ``candidates`` the runtimes tried
    (default :data:`~vitkit.deploy.auto.DEFAULT_CANDIDATES`), ``cache`` whether measurements are reused; the
    result has ``choice`` (:class:`~vitkit.deploy.auto.AutoChoice`), ``out_dir`` gets ``runtime.json`` (and the
    winner's ONNX file). Raises :class:`~vitkit.deploy.auto.NoRuntimeInBudget` and writes nothing when no
    candidate is within the budget."""
    check_choice(runtime, "deploy runtime", RUNTIMES)
    check_choice(reduce, "reduce", REDUCE)
    if runtime == "auto":
        return _deploy_auto(model, out_dir, data, calib, max_drop, candidates, cache, reduce, outliers, threads)
    graph = RUNTIMES[runtime]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript tracer warnings of the token-reduction patches
        if runtime in TORCH_RUNNERS:
            runner = TORCH_RUNNERS[runtime](model, calib, reduce, outliers)
            runner.outlier_channels = getattr(runner, "outlier_channels", {})
            runner.runtime = runtime
            runner.vitkit_deployed = runtime != "torch-fp32"  # reports: no parameter / MAC count of int8 kernels
            return runner
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


def _bf16(model: nn.Module) -> nn.Module:
    from ..quant.precision import PrecisionConfig, apply_precision

    out = copy.deepcopy(model).eval()
    apply_precision(out, PrecisionConfig(dtype="bf16", require_native=False))
    return out


def _w8a8(attention: str, kernel: str = "int_mm"):
    def build(model, calib, reduce, outliers):
        kw = dict(activations="static", attention=attention, reduce=reduce, outliers=outliers)
        if kernel == "int_mm":
            return to_torch_w8a8(model, calib, **kw)
        runner = to_torch_w8a8(model, calib, compile=False, **kw)
        to_onednn_(runner, qkv_dtype=torch.bfloat16 if attention == "bf16" else torch.float32)
        compiled = compile_runner(runner)
        compiled.outlier_channels = runner.outlier_channels
        return compiled

    return build


#: the PyTorch runtimes: (model, calib, reduce, outliers) → module
TORCH_RUNNERS = {
    "torch-fp32": lambda model, *_: copy.deepcopy(model).eval(),  # a copy: deploy sets attributes on its result
    "torch-compile": lambda model, *_: compile_runner(copy.deepcopy(model).eval()),
    "torch-bf16": lambda model, *_: _bf16(model),
    "torch-w8a8": _w8a8("fp32"),
    "torch-w8a8-bf16": _w8a8("bf16"),
    "torch-w8a8-onednn": _w8a8("bf16", "onednn"),
}


def _deploy_auto(model, out_dir, data, calib, max_drop, candidates, cache, reduce, outliers, threads) -> nn.Module:
    """:func:`deploy` with ``runtime="auto"`` (see :mod:`vitkit.deploy.auto`)."""
    if data is None:
        raise ConfigError("runtime 'auto' measures candidates on evaluation images: pass data=(images, labels)")
    images, labels = data
    calib = calib if calib is not None else images[:32]

    def build(runtime: str, where: Path) -> nn.Module:
        return deploy(
            model,
            where,
            runtime=runtime,
            calib=calib,
            example=images[:2],
            reduce=reduce,
            outliers=outliers,
            threads=threads,
        )

    with tempfile.TemporaryDirectory(prefix="vitkit-auto-") as tmp:
        choice, runners = choose_runtime(
            model, build, images, labels, max_drop=max_drop, candidates=candidates, cache=cache, workdir=Path(tmp)
        )
        return keep_winner(choice, runners, Path(tmp), out_dir)


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
