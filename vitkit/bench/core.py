"""``vitkit.benchmark``: a candidate against its untouched baseline, measured in the same process."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..adapters import adapter_for
from ..errors import NumericsError
from . import timing
from .env import environment
from .flops import count_macs
from .memory import peak_inference_mb
from .metrics import agreement, classify, topk_accuracy
from .robustness import RobustnessSpec, robustness

_log = logging.getLogger(__name__)


@dataclass
class VariantResult:
    """One row of a report. ``throughput`` is img/s at the largest batch size."""

    name: str
    top1: float | None = None
    top5: float | None = None
    agreement: float | None = None
    kl: float | None = None
    throughput: float | None = None
    throughput_by_batch: dict[int, float] = field(default_factory=dict)
    speedup: float | None = None
    latency_p50_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_ratio: float | None = None
    peak_mem_mb: float | None = None
    params: int | None = 0
    file_bytes: int = 0
    macs: int | None = None
    patch_corrupt_top1: float | None = None
    patch_consistency: float | None = None
    shift_consistency: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchResult:
    env: dict[str, Any]
    variants: list[VariantResult]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"env": self.env, "settings": self.settings, "variants": [asdict(v) for v in self.variants]}

    def variant(self, name: str) -> VariantResult:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)


def check_finite(model: nn.Module) -> None:
    """Refuse models holding NaN/Inf, naming the first bad tensor."""
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise NumericsError(f"tensor {name!r} holds {bad} NaN/Inf value(s): fix or reload the weights first")


def is_external(model: nn.Module) -> bool:
    """A module wrapping another runtime (e.g. ``OrtModule``): it declares ``file_bytes`` and holds no parameters."""
    return hasattr(type(model), "file_bytes") and next(model.parameters(), None) is None


def param_count(model: nn.Module) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel()
    return total


def file_bytes(model: nn.Module) -> int:
    """Size of the model's weights as a safetensors file (what an artifact stores)."""
    from safetensors.torch import save

    from .._io import state_dict_for_saving

    return len(save(state_dict_for_saving(model)))


def _example(data, batch: int, shape: tuple[int, int, int]) -> torch.Tensor:
    if data is not None:
        from ..data import iterate_batches

        x, _ = next(iterate_batches(data, batch))
        if x.shape[0] < batch:  # tile a tiny dataset up to the batch size
            x = x.repeat(math.ceil(batch / x.shape[0]), 1, 1, 1)[:batch]
        return x
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))


def _accuracy(rows: list[VariantResult], models, data, limit: int | None, *, has_baseline: bool) -> None:
    """top-1/top-5 of every model; agreement and KL against the first (the baseline) when there is one."""
    logits = [classify(m, data, limit=limit) for m in models]
    for row, (out, labels) in zip(rows, logits, strict=True):
        row.top1 = topk_accuracy(out, labels, 1)
        row.top5 = topk_accuracy(out, labels, 5)
        row.agreement, row.kl = 1.0, 0.0
    if has_baseline:
        for row, (out, _) in zip(rows[1:], logits[1:], strict=True):
            agr = agreement(out, logits[0][0])
            row.agreement, row.kl = agr["agreement"], agr["kl"]


def _size_and_memory(row: VariantResult, m: nn.Module, data, shape, memory_batch: int | None) -> None:
    if is_external(m):  # an ONNX Runtime session: its file, no PyTorch parameters or MAC counter
        row.file_bytes = int(m.file_bytes)
        row.params = None
        row.extra["runtime"] = type(m).__name__
    elif getattr(m, "vitkit_deployed", False):  # a deployed PyTorch runner (int8 kernels, compiled): its weights
        row.params = None
        row.file_bytes = file_bytes(m)
        row.extra["runtime"] = getattr(m, "runtime", type(m).__name__)
    else:
        row.params = param_count(m)
        row.file_bytes = file_bytes(m)
        row.macs = count_macs(m, _example(data, 1, shape))
    if memory_batch is not None:
        row.peak_mem_mb = peak_inference_mb(m, _example(data, memory_batch, shape))


def _ratios(base: VariantResult, candidates: list[VariantResult]) -> None:
    """Throughput speed-up and batch-1 latency ratio of each candidate over the baseline."""
    for cand in candidates:
        cand.speedup = round(cand.throughput / base.throughput, 3) if base.throughput else None
        if base.latency_p50_ms and cand.latency_p50_ms:
            cand.latency_ratio = round(base.latency_p50_ms / cand.latency_p50_ms, 3)
    base.speedup = base.latency_ratio = 1.0


def benchmark(
    model: nn.Module,
    data=None,
    baseline: nn.Module | None = None,
    *,
    name: str = "candidate",
    baseline_name: str = "baseline",
    batch_sizes: tuple[int, ...] = (1, 16),
    threads: int | None = 2,
    repeats: int = 7,
    warmup: int = 2,
    latency_runs: int = 30,
    eval_limit: int | None = None,
    measure_memory: bool = True,
    robust: RobustnessSpec | None = None,
    candidates: list[tuple[str, nn.Module]] | None = None,
) -> BenchResult:
    """Measure ``model`` (and ``baseline``, interleaved, in this process) on ``data``.

    Returns accuracy (top-1/top-5 when ``data`` has labels), agreement with the baseline (top-1 agreement
    and mean KL), throughput per batch size, batch-1 latency p50/p90, peak inference memory, params,
    safetensors size and analytic MACs per image. ``data`` is a dataset (or None for timing only).
    ``robust`` adds patch-corruption and one-pixel-shift consistency (:mod:`vitkit.bench.robustness`).
    ``candidates`` are more ``(name, model)`` rows (e.g. a recipe's intermediate steps), measured interleaved
    with the others and listed between the baseline and ``model``.
    """
    from ..validate import check_int

    check_int(repeats, "repeats", low=1, why=" (timed runs per batch size)")
    if threads:
        torch.set_num_threads(threads)
    extra = list(candidates or [])
    models = ([baseline] if baseline is not None else []) + [m for _, m in extra] + [model]
    names = ([baseline_name] if baseline is not None else []) + [n for n, _ in extra] + [name]
    for m in models:
        check_finite(m)
        m.eval()
    internal = [m for m in models if not is_external(m)]
    ref = internal[0] if internal else model
    shape = adapter_for(ref).input_size(ref)  # any host family (TinyViT, Swin, ...), not only a plain ViT
    rows = [VariantResult(name=n) for n in names]

    if data is not None:
        _accuracy(rows, models, data, eval_limit, has_baseline=baseline is not None)

    if data is not None and robust is not None:
        for row, r in zip(rows, robustness(models, data, robust), strict=True):
            row.patch_corrupt_top1 = r["patch_corrupt_top1"]
            row.patch_consistency = r["patch_consistency"]
            row.shift_consistency = r["shift_consistency"]

    for bs in batch_sizes:
        x = _example(data, bs, shape)
        samples = timing.interleaved_times(models, x, repeats=repeats, warmup=warmup, min_time=0.05 if bs == 1 else 0)
        for row, s in zip(rows, samples, strict=True):
            row.throughput_by_batch[bs] = round(bs / timing.median(s), 2)
    big = max(batch_sizes)
    for row in rows:
        row.throughput = row.throughput_by_batch[big]

    if 1 in batch_sizes and latency_runs > 0:
        x1 = _example(data, 1, shape)
        samples = timing.interleaved_times(models, x1, repeats=latency_runs, warmup=warmup)
        for row, s in zip(rows, samples, strict=True):
            row.latency_p50_ms = round(1e3 * timing.percentile(s, 50), 3)
            row.latency_p90_ms = round(1e3 * timing.percentile(s, 90), 3)

    for row, m in zip(rows, models, strict=True):
        _size_and_memory(row, m, data, shape, big if measure_memory else None)
    if baseline is not None:
        _ratios(rows[0], rows[1:])
    settings = dict(batch_sizes=list(batch_sizes), repeats=repeats, warmup=warmup, latency_runs=latency_runs)
    if data is not None:
        settings["data"] = getattr(data, "name", type(data).__name__)
        if getattr(data, "split_rule", None):
            settings["data_split"] = data.split_rule
        settings["eval_images"] = len(data) if eval_limit is None else min(eval_limit, len(data))
    if robust is not None:
        settings["robustness"] = asdict(robust)
    return BenchResult(environment(), rows, settings)
