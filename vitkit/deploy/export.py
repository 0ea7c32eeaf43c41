"""``vitkit export``: any artifact (token-reduced, pruned, quantized, early-exit...) to ONNX, with a parity check.

The graph is written by :func:`~vitkit.deploy.runtime.deploy` (``quant`` picks the runtime: ``auto`` → QDQ with
our calibrated scales for a ``ptq`` model, else the float graph; ``fake`` → the fake-quant graph, exact parity at
float speed; ``dynamic`` → vitkit's int8 deployment; ``float`` → the model as it computes). A transform that needs
a different graph for export offers ``model.vitkit_onnx_module()``.

Every export is checked on real images: max |ONNX − PyTorch| of the logits and top-1 agreement are printed and
stored in ``export_report.json``, and the ONNX Runtime session is benchmarked against the PyTorch model in the
same process (``export_report.md``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .._io import atomic_write_text
from ..adapters.protocol import adapter_for
from ..errors import ConfigError
from ..validate import check_choice, check_int
from .runtime import deploy
from .trace import OPSET

_log = logging.getLogger(__name__)

FORMATS = ("onnx",)
#: ``--quant`` value → deploy runtime
QUANT_MODES = {"auto": "ort-auto", "qdq": "ort-qdq", "fake": "ort-fake", "dynamic": "ort-int8", "float": "ort-fp32"}


#: What the CLI and export_report.md say when no images were given or recorded for the parity check.
RANDOM_PARITY = "parity on random input: pass --data (real images) for a meaningful check"


@dataclass
class ExportResult:
    path: Path
    mode: str
    max_abs_diff: float
    agreement: float
    images: int
    bench: dict[str, Any] = field(default_factory=dict)
    random_input: bool = False  # parity checked on random input (no data given or recorded)

    def to_dict(self) -> dict[str, Any]:
        return {
            "parity_input": "random" if self.random_input else "real",
            "path": str(self.path),
            "mode": self.mode,
            "max_abs_diff": self.max_abs_diff,
            "top1_agreement": self.agreement,
            "images": self.images,
            "bench": self.bench,
        }


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
    opset: int = OPSET,
    bench: bool = True,
    bench_kwargs: dict[str, Any] | None = None,
) -> ExportResult:
    """Export ``model`` to ``out_dir/model.onnx``, check parity on ``images`` real images of ``data`` and
    benchmark the ONNX Runtime session against the PyTorch model. Writes ``export_report.{json,md}``."""
    from ..bench.core import check_finite

    check_choice(fmt, "export format (--format)", FORMATS)
    check_choice(quant, "quant mode (--quant)", QUANT_MODES)
    check_int(images, "images", low=1, why=" (for the parity check)")
    check_int(opset, "opset", low=7, high=20, why=" (the range of torch's ONNX exporter)")
    check_finite(model)  # before anything is written: a NaN/Inf model must not leave a half-written out_dir
    final = Path(out_dir)
    if final.exists() and not final.is_dir():
        raise ConfigError(f"output {final} exists and is not a directory: choose another output path")
    final.parent.mkdir(parents=True, exist_ok=True)
    # everything is written into a stage directory beside the target and moved in file by file at the end: a failure
    # (an op ONNX cannot express, Ctrl-C) leaves no half-written export, and other files in the target stay
    out_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}.stage-", dir=final.parent))
    try:
        result = _export_into(model, out_dir, final, data, images, quant, opset, bench, bench_kwargs)
        final.mkdir(exist_ok=True)
        for f in sorted(out_dir.iterdir()):
            os.replace(f, final / f.name)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return result


def _export_into(model, out_dir: Path, final: Path, data, images, quant, opset, bench, bench_kwargs) -> ExportResult:
    """:func:`export_model`'s work, every file written into ``out_dir`` (the stage directory); paths recorded as
    they will be in ``final``."""
    from ..bench import benchmark
    from ..data import iterate_batches
    from ..report import markdown_report

    model.eval()
    if data is not None:
        xs = [x for x, _ in iterate_batches(data, 128, limit=images)]
        real = torch.cat(xs)
    else:
        size = adapter_for(model).input_size(model)
        real = torch.randn(images, *size, generator=torch.Generator().manual_seed(0))
    session = deploy(
        model, out_dir, runtime=QUANT_MODES[quant], example=real[:2], calib=real[:32], name="model.onnx", opset=opset
    )
    mode = session.graph
    max_diff, agree = parity(model, session, real)
    _log.info("ONNX parity on %d images: max |diff| %.3g, top-1 agreement %.2f%%", len(real), max_diff, 100 * agree)
    result = ExportResult(final / Path(session.path).name, mode, max_diff, agree, len(real), random_input=data is None)
    if bench:
        kw = dict(batch_sizes=(1, 16), repeats=5, latency_runs=20, measure_memory=False)
        kw.update(bench_kwargs or {})
        res = benchmark(session, data, model, name=f"onnxruntime ({mode})", baseline_name="pytorch", **kw)
        rep = res.to_dict()
        rep["export"] = result.to_dict()
        result.bench = rep
        md = markdown_report(rep, title="ONNX Runtime vs PyTorch")
        if data is None:  # say it under the title: the parity numbers above are not on real images
            title, _, rest = md.partition("\n")
            md = f"{title}\n\n> {RANDOM_PARITY}\n{rest}"
        atomic_write_text(out_dir / "export_report.md", md)
    atomic_write_text(out_dir / "export_report.json", json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    return result
