"""Build a candidate (``vitkit.apply_`` on a copy of the model, then its runtime) and measure it against the original.

Measurements: top-1 and agreement on the first ``images`` images of the split, throughput at ``batch_size``
(median of ``repeats`` interleaved samples, baseline = the original model in PyTorch eager fp32, timed in the same
loop), batch-1 latency p50 for the latency objective, and the deployable size (packed quantized weights for a
``ptq`` model, the ONNX file for ORT runtimes, the safetensors file otherwise). PyTorch candidates go through
:func:`vitkit.benchmark`; ONNX Runtime sessions (no ``patch_embed`` to inspect) through the same primitives.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..adapters.protocol import adapter_for
from ..bench import benchmark
from ..bench.core import _example, file_bytes
from ..bench.metrics import agreement, classify, topk_accuracy
from ..bench.timing import interleaved_times, median, percentile
from .space import Candidate, Fidelity

_log = logging.getLogger(__name__)


def resolved_steps(cand: Candidate, data: str) -> list[dict]:
    """The candidate's recipe steps, with recovery (distill) steps training on the search's data by default."""
    steps = cand.recipe_steps()
    for s in steps:
        if "distill" in s:
            s["distill"].setdefault("data", data)
    return steps


class RecipeEvaluator:
    """``evaluator(candidate, fidelity) -> metrics``; built candidates are cached until :meth:`forget`."""

    def __init__(self, baseline: nn.Module, val, calib: torch.Tensor, data: str, *, objective: str, batch_size: int):
        self.baseline, self.val, self.calib, self.data = baseline.eval(), val, calib, data
        self.objective, self.batch_size = objective, batch_size
        self._built: dict[str, tuple[nn.Module, nn.Module, int, float]] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="vitkit-search-")
        self.calls = 0

    def build(self, cand: Candidate) -> tuple[nn.Module, nn.Module, int, float]:
        """``(torch model, runner, size bytes, build seconds)``; runner is the model or an ORT session module."""
        if cand.cid in self._built:
            return self._built[cand.cid]
        from ..api import apply_
        from ..recipe import parse_steps

        t0 = time.perf_counter()
        model = copy.deepcopy(self.baseline)
        report = apply_(model, list(parse_steps(resolved_steps(cand, self.data))), calib=self.calib)
        model.eval().requires_grad_(False)  # inference only from here on
        packed = [s.decisions.get("packed_bytes") for s in report.steps if s.name in ("ptq", "mixed_ptq")]
        size = int(packed[-1]) if packed and packed[-1] else file_bytes(model)
        runner: nn.Module = model
        if cand.deploy != "torch":
            runner = deploy(model, Path(self._tmp.name) / cand.cid, cand.deploy, self.calib, self.val)
            size = getattr(runner, "file_bytes", None) or size
        built = (model, runner, size, time.perf_counter() - t0)
        self._built[cand.cid] = built
        return built

    def forget(self, keep: set[str]) -> None:
        for cid in list(self._built):
            if cid not in keep:
                del self._built[cid]

    def __call__(self, cand: Candidate, fid: Fidelity, data=None) -> dict[str, Any]:
        self.calls += 1
        model, runner, size, build_s = self.build(cand)
        data = self.val if data is None else data
        n = min(fid.images, len(data))
        t0 = time.perf_counter()
        latency = self.objective == "latency"
        if runner is model:
            res = benchmark(
                model,
                data,
                self.baseline,
                name=cand.label,
                batch_sizes=(1, self.batch_size) if latency else (self.batch_size,),
                threads=None,
                repeats=fid.repeats if self.objective != "size" else 1,
                latency_runs=5 * fid.repeats if latency else 0,
                eval_limit=n,
                measure_memory=False,
            )
            base, row = res.variants
            m = {
                "top1": row.top1,
                "base_top1": base.top1,
                "agreement": row.agreement,
                "speedup": row.speedup,
                "throughput": row.throughput,
                "base_throughput": base.throughput,
                "latency_ratio": row.latency_ratio if latency else None,
                "latency_p50_ms": row.latency_p50_ms,
                "macs": row.macs,
            }
        else:
            m = self._measure_session(runner, data, n, fid, latency)
        m.update(
            drop_pt=round(100 * (m["base_top1"] - m["top1"]), 4),
            size_bytes=int(size),
            images=n,
            repeats=fid.repeats,
            deploy=cand.deploy,
            build_s=round(build_s, 2),
            measure_s=round(time.perf_counter() - t0, 2),
        )
        return m

    def _measure_session(self, runner: nn.Module, data, n: int, fid: Fidelity, latency: bool) -> dict[str, Any]:
        base_logits, labels = classify(self.baseline, data, limit=n)
        logits, _ = classify(runner, data, limit=n)
        shape = adapter_for(self.baseline).input_size(self.baseline)
        x = _example(data, self.batch_size, shape)
        base_t, cand_t = interleaved_times([self.baseline, runner], x, repeats=fid.repeats, warmup=2)
        m = {
            "top1": topk_accuracy(logits, labels, 1),
            "base_top1": topk_accuracy(base_logits, labels, 1),
            "agreement": agreement(logits, base_logits)["agreement"],
            "speedup": round(median(base_t) / median(cand_t), 3),
            "throughput": round(self.batch_size / median(cand_t), 2),
            "base_throughput": round(self.batch_size / median(base_t), 2),
            "latency_ratio": None,
            "latency_p50_ms": None,
            "macs": None,
        }
        if latency:
            x1 = _example(data, 1, shape)
            b1, c1 = interleaved_times([self.baseline, runner], x1, repeats=5 * fid.repeats, warmup=2, min_time=0.05)
            m["latency_p50_ms"] = round(1e3 * percentile(c1, 50), 3)
            m["latency_ratio"] = round(percentile(b1, 50) / percentile(c1, 50), 3)
        return m


#: search space ``deploy`` value → :func:`vitkit.deploy.deploy` runtime
RUNTIMES = {"ort": "ort-stripped", "ort_int8": "ort-int8", "torch_w8a8": "torch-w8a8", "auto": "auto"}
#: validation images ``auto`` scores its runtime candidates on
AUTO_IMAGES = 256


def deploy(model: nn.Module, out_dir: Path, kind: str, calib: torch.Tensor, val=None) -> nn.Module:
    """``ort``: ONNX Runtime fp32 session of the (float) model; ``ort_int8``: vitkit's int8 deployment;
    ``torch_w8a8``: ``torch._int_mm`` W8A8; ``auto``: the fastest runtime measured here within 1 pt of the
    candidate model's top-1 on the first :data:`AUTO_IMAGES` validation images."""
    from ..data import iterate_batches
    from ..deploy import deploy as deploy_model

    kw = {}
    if kind == "auto":
        batches = list(iterate_batches(val, 64, limit=AUTO_IMAGES))
        kw["data"] = (torch.cat([x for x, _ in batches]), torch.cat([torch.as_tensor(y) for _, y in batches]))
    return deploy_model(model, out_dir, runtime=RUNTIMES[kind], calib=calib, **kw)
