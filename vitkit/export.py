"""``vitkit export``: any artifact (token-reduced, pruned, quantized, early-exit...) to ONNX, with a parity check.

The ONNX graph is traced from the PyTorch model with the TorchScript exporter (opset 17, dynamic batch; the
dynamo exporter mis-handles the ``__class__``-swapped timm modules). A transform that needs a different graph
for export offers ``model.vitkit_onnx_module()`` or a quantized model goes through
``vitkit.quant.export_qdq`` when it exists (our calibrated scales as QuantizeLinear/DequantizeLinear pairs);
otherwise the fake-quant graph itself is exported (exact parity, float speed).

Every export is checked on real images: max |ONNX − PyTorch| of the logits and top-1 agreement are printed and
stored in ``export_report.json``, and the ONNX Runtime session is benchmarked against the PyTorch model in the
same process (``export_report.md``).
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ._io import atomic_write_bytes, atomic_write_text
from .errors import ConfigError, UnsupportedModelError

_log = logging.getLogger(__name__)

FORMATS = ("onnx",)
QUANT_MODES = ("auto", "qdq", "fake", "dynamic", "float")


@dataclass
class ExportResult:
    path: Path
    mode: str
    max_abs_diff: float
    agreement: float
    images: int
    bench: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "mode": self.mode,
            "max_abs_diff": self.max_abs_diff,
            "top1_agreement": self.agreement,
            "images": self.images,
            "bench": self.bench,
        }


def _is_quantized(model: nn.Module) -> bool:
    from .quant.modules import quantizers

    return bool(quantizers(model))


_UNSUPPORTED_OP = re.compile(r"operator '?([\w:.]+)'? to ONNX opset", re.IGNORECASE)


def trace_onnx(model: nn.Module, example: torch.Tensor, path: Path, *, opset: int = 17) -> Path:
    """TorchScript ONNX export with a dynamic batch axis; an op ONNX can't express raises naming the op."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=["x"],
                output_names=["logits"],
                dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
            )
        except Exception as exc:  # torch raises several types (UnsupportedOperatorError, RuntimeError, ...)
            msg = str(exc)
            hit = _UNSUPPORTED_OP.search(msg)
            if hit:
                raise UnsupportedModelError(
                    f"cannot export to ONNX: operator {hit.group(1)} has no opset-{opset} equivalent; "
                    "remove the step that introduces it or export with a higher --opset"
                ) from None
            raise UnsupportedModelError(f"ONNX export failed: {msg.splitlines()[0][:300]}") from None
    return path


def onnx_graph_module(model: nn.Module) -> nn.Module:
    """The module to trace: a transform-provided static graph (``vitkit_onnx_module``) or the model itself."""
    hook = getattr(model, "vitkit_onnx_module", None)
    return hook() if callable(hook) else model


def write_onnx(
    model: nn.Module, example: torch.Tensor, dst: Path, mode: str = "auto", opset: int = 17, calib=None
) -> tuple[Path, str]:
    """Write ``dst`` atomically; returns (path, the mode actually used). ``mode``: auto (QDQ for a ``ptq``
    model, else float), qdq, fake (the fake-quant graph), float, dynamic (RepQ reparameterization from
    ``calib`` — default ``example`` — and outlier input channels kept float, then ORT dynamic int8: the same
    preparation as :func:`vitkit.quant.deploy_int8`)."""
    quantized = _is_quantized(model)
    if mode == "auto":
        mode = "qdq" if quantized else "float"
    if not quantized and mode in ("qdq", "fake"):
        raise ConfigError(f"--quant {mode} needs a quantized (ptq) artifact; this model is float: use --quant auto")
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        if mode == "qdq":
            try:
                from .quant import export_qdq
            except ImportError:
                _log.warning("QDQ export is not available in this vitkit; exporting the fake-quant graph instead")
                mode = "fake"
            else:
                export_qdq(model, tmp_path, example)
        if mode in ("float", "fake"):
            trace_onnx(onnx_graph_module(model).eval(), example, tmp_path, opset=opset)
        elif mode == "dynamic":
            from .quant.deploy import export_onnx as float_onnx
            from .quant.deploy import int8_float_model, ort_dynamic_int8

            float_model = int8_float_model(model, example if calib is None else calib)
            float_onnx(float_model, Path(tmp) / "fp32.onnx")
            ort_dynamic_int8(Path(tmp) / "fp32.onnx", tmp_path)
        atomic_write_bytes(dst, tmp_path.read_bytes())
    return dst, mode


@torch.inference_mode()
def parity(model: nn.Module, session: nn.Module, images: torch.Tensor, batch: int = 64) -> tuple[float, float]:
    """(max |ONNX − PyTorch| over the logits, top-1 agreement) on ``images``."""
    model.eval()
    diffs, agree = [], []
    for i in range(0, len(images), batch):
        x = images[i : i + batch]
        ref, got = model(x).float(), session(x).float()
        diffs.append((ref - got).abs().max())
        agree.append(ref.argmax(-1) == got.argmax(-1))
    return float(torch.stack(diffs).max()), float(torch.cat(agree).float().mean())


def export_model(
    model: nn.Module,
    out_dir: str | Path,
    *,
    data=None,
    images: int = 128,
    fmt: str = "onnx",
    quant: str = "auto",
    opset: int = 17,
    bench: bool = True,
    bench_kwargs: dict[str, Any] | None = None,
) -> ExportResult:
    """Export ``model`` to ``out_dir/model.onnx``, check parity on ``images`` real images of ``data`` and
    benchmark the ONNX Runtime session against the PyTorch model. Writes ``export_report.{json,md}``."""
    from .adapters.timm_vit import input_size
    from .bench import benchmark
    from .data import iterate_batches
    from .quant.deploy import OrtModule
    from .report import markdown_report

    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; valid formats: {list(FORMATS)}")
    if quant not in QUANT_MODES:
        raise ConfigError(f"unknown quant mode {quant!r}; valid modes: {list(QUANT_MODES)}")
    if images < 1:
        raise ConfigError(f"images must be >= 1 for the parity check, got {images}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    if data is not None:
        xs = [x for x, _ in iterate_batches(data, 128, limit=images)]
        real = torch.cat(xs)
    else:
        real = torch.randn(images, *input_size(model), generator=torch.Generator().manual_seed(0))
    path, mode = write_onnx(model, real[:2], out_dir / "model.onnx", quant, opset, calib=real[:32])
    session = OrtModule(path)
    max_diff, agree = parity(model, session, real)
    _log.info("ONNX parity on %d images: max |diff| %.3g, top-1 agreement %.2f%%", len(real), max_diff, 100 * agree)
    result = ExportResult(path, mode, max_diff, agree, len(real))
    if bench:
        kw = dict(batch_sizes=(1, 16), repeats=5, latency_runs=20, measure_memory=False)
        kw.update(bench_kwargs or {})
        res = benchmark(session, data, model, name=f"onnxruntime ({mode})", baseline_name="pytorch", **kw)
        rep = res.to_dict()
        rep["export"] = result.to_dict()
        result.bench = rep
        atomic_write_text(out_dir / "export_report.md", markdown_report(rep, title="ONNX Runtime vs PyTorch"))
    atomic_write_text(out_dir / "export_report.json", json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    return result
