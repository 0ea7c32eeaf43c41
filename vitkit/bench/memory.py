"""Peak memory of one inference, from the kernel's peak-RSS counter (Linux ``VmHWM``).

``torch`` CPU allocations are invisible to ``tracemalloc``; the kernel sees them all. We reset the
high-water mark (``/proc/self/clear_refs`` ← 5), run one forward, and report the RSS it added on top of
what the process held before, plus the model's own weight bytes: "memory this model needs to run at
this batch size". Without a resettable counter (non-Linux) it returns ``None``.
"""

from __future__ import annotations

import gc

import torch
import torch.nn as nn


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def model_bytes(model: nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def peak_inference_mb(model: nn.Module, x: torch.Tensor) -> float | None:
    gc.collect()
    if not _reset_peak():
        return None
    before = _status_kb("VmRSS")
    with torch.inference_mode():
        model(x)
    peak = _status_kb("VmHWM")
    if before is None or peak is None:
        return None
    return round((max(peak - before, 0) * 1024 + model_bytes(model)) / 2**20, 1)
