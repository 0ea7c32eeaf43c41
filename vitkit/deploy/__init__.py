"""Deployment: a model (float, token-reduced, pruned, ``ptq``-quantized, early-exit...) on a runtime.

```python
from vitkit.deploy import deploy, deploy_int8, export_model, export_qdq
session = deploy(model, "out/", runtime="ort-int8", calib=images)  # RepQ reparam, outliers float, ORT int8
session = deploy_int8(model, "out/", calib=images)  # the same; backend="torch" for torch.ao dynamic int8
runner = deploy(model, "out/", runtime="auto", data=(images, labels))  # fastest measured here within 1 pt
runner.choice.markdown()  # every candidate: img/s, × vs PyTorch fp32, top-1 drop, and why one won
export_qdq(ptq_model, "model.qdq.onnx")  # ONNX QDQ with vitkit's scales (W8A8), int8 weights
export_model(model, "onnx/", data=data)  # what `vitkit export` runs: file + parity + ORT benchmark
```

One path: :func:`~vitkit.deploy.runtime.deploy` (runtimes) → :func:`~vitkit.deploy.onnx.write_onnx` (graphs) →
:func:`~vitkit.deploy.trace.trace_onnx` (the one tracer). Layer: above the method families (it reads ``quant``),
below ``api``; no method family imports it.
"""

from .auto import CANDIDATES, DEFAULT_CANDIDATES, AutoChoice, NoRuntimeInBudget, choose_runtime
from .export import FORMATS, QUANT_MODES, ExportResult, export_model, parity
from .int8 import OUTLIER_RATIO, int8_float_model, reparameterize_, strip_quant, to_torch_dynamic
from .onnx import GRAPHS, OnnxFile, export_onnx, write_onnx
from .ort import OrtModule, ort_dynamic_int8, session_options
from .qdq import export_qdq
from .runtime import RUNTIMES, deploy, deploy_int8
from .torch_int8 import Int8Linear, to_torch_w8a8
from .trace import OPSET, onnx_graph_module, trace_onnx

__all__ = [
    "CANDIDATES",
    "DEFAULT_CANDIDATES",
    "AutoChoice",
    "Int8Linear",
    "NoRuntimeInBudget",
    "choose_runtime",
    "to_torch_w8a8",
    "FORMATS",
    "GRAPHS",
    "OPSET",
    "OUTLIER_RATIO",
    "QUANT_MODES",
    "RUNTIMES",
    "ExportResult",
    "OnnxFile",
    "OrtModule",
    "deploy",
    "deploy_int8",
    "export_model",
    "export_onnx",
    "export_qdq",
    "int8_float_model",
    "onnx_graph_module",
    "ort_dynamic_int8",
    "parity",
    "reparameterize_",
    "session_options",
    "strip_quant",
    "to_torch_dynamic",
    "trace_onnx",
    "write_onnx",
]
