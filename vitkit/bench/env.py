"""The environment every report records: versions, threads, CPU model and the ISA features that decide which kernels
are fast (read from ``/proc/cpuinfo``, never assumed), and a GEMM probe per dtype (fp32, bf16, int8) that says what
this machine delivers right now (also a noise indicator: compare variants interleaved in one process)."""

from __future__ import annotations

import datetime as _dt
import functools
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


#: ``/proc/cpuinfo`` flags that decide the fast path: FMA/AVX2 (fp32 everywhere), AVX-512, VNNI (int8 dot
#: products), native bf16 (AVX512_BF16) and AMX tiles.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_features(cpuinfo: str | None = None) -> list[str]:
    """The :data:`ISA_FLAGS` this CPU reports (in that order), from ``/proc/cpuinfo`` or the text given."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as fh:
                cpuinfo = fh.read()
        except OSError:
            return []
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
            break
    return [f for f in ISA_FLAGS if f in flags]


def _median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_gflops(n: int = 1024, repeats: int = 7) -> float:
    """Median fp32 GEMM throughput (GFLOP/s) at the current thread count: the machine's dense peak."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / _median_seconds(lambda: torch.mm(a, b), repeats) / 1e9


def gemm_probe(n: int = 512, repeats: int = 5) -> dict[str, float | None]:
    """Median GEMM throughput per dtype in G(FL)OP/s at the current thread count: ``fp32`` and ``bf16``
    (``torch.mm``) and ``int8`` (``torch._int_mm``, int8 × int8 → int32); ``None`` where this torch build or
    CPU cannot run that dtype. Small (512³) so every report can afford it; ratios between dtypes are what
    tell which precision pays on this machine. Measured once per process and thread count (what each dtype can
    do does not change; the fp32 ``gemm_gflops`` of a report is re-measured as its noise indicator)."""
    return dict(_measured_probe(n, repeats, torch.get_num_threads()))


@functools.lru_cache(maxsize=8)
def _measured_probe(n: int, repeats: int, threads: int) -> tuple[tuple[str, float | None], ...]:
    out: dict[str, float | None] = {}
    a, b = torch.randn(n, n), torch.randn(n, n)
    cases = {
        "fp32": lambda: torch.mm(a, b),
        "bf16": (lambda x, y: lambda: torch.mm(x, y))(a.bfloat16(), b.bfloat16()),
        "int8": (lambda x, y: lambda: torch._int_mm(x, y))(
            torch.randint(-128, 128, (n, n), dtype=torch.int8), torch.randint(-128, 128, (n, n), dtype=torch.int8)
        ),
    }
    for name, fn in cases.items():
        try:
            out[name] = round(2 * n**3 / _median_seconds(fn, repeats) / 1e9, 1)
        except (RuntimeError, NotImplementedError):
            out[name] = None
    return tuple(out.items())


def environment(*, probe: bool = True) -> dict:
    from .._version import __version__

    env = {
        "vitkit": __version__,
        "torch": torch.__version__,
        "timm": importlib.metadata.version("timm"),
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "isa": " ".join(cpu_features()) or "unknown",
        "cores": _cores(),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if probe:
        env["gemm_gflops"] = round(gemm_gflops(), 1)
        env["gemm_gops_512"] = gemm_probe()
    return env


def _cores() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1
