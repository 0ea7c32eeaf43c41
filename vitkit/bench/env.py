"""The environment every report records: versions, threads, CPU, and a GEMM probe (noise indicator)."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import statistics
import time

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gemm_gflops(n: int = 1024, repeats: int = 7) -> float:
    """Median fp32 GEMM throughput (GFLOP/s) at the current thread count: the machine's dense peak."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def environment(*, probe: bool = True) -> dict:
    from .._version import __version__

    env = {
        "vitkit": __version__,
        "torch": torch.__version__,
        "timm": importlib.metadata.version("timm"),
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cores": _cores(),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if probe:
        env["gemm_gflops"] = round(gemm_gflops(), 1)
    return env


def _cores() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1
