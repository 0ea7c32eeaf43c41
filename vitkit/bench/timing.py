"""Interleaved timing: every variant is timed round-robin in one process, after warm-up, median of repeats.

Noise on a shared 2-core machine is ±15–20 % between runs; interleaving makes drift hit all variants
alike, so ratios are far steadier than absolute numbers.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
import torch.nn as nn


def _run(model: nn.Module, x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    model(x)
    return time.perf_counter() - t0


def interleaved_times(
    models: Sequence[nn.Module], x: torch.Tensor, *, repeats: int = 5, warmup: int = 2, min_time: float = 0.0
) -> list[list[float]]:
    """Seconds per forward for each model: ``repeats`` samples each, the models alternating."""
    with torch.inference_mode():
        for m in models:
            for _ in range(warmup):
                m(x)
        samples: list[list[float]] = [[] for _ in models]
        for _ in range(repeats):
            for i, m in enumerate(models):
                if min_time > 0:  # several calls per sample for very short forwards
                    n, t = 0, 0.0
                    while t < min_time or n == 0:
                        t += _run(m, x)
                        n += 1
                    samples[i].append(t / n)
                else:
                    samples[i].append(_run(m, x))
    return samples


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` in [0, 100]."""
    vals = sorted(values)
    if not vals:
        return float("nan")
    pos = (len(vals) - 1) * q / 100
    lo, hi = int(pos), min(int(pos) + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)
