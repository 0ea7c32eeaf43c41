"""Measurement: accuracy/agreement, interleaved timing, memory, size and analytic FLOPs."""

from .core import BenchResult, VariantResult, benchmark
from .env import environment, gemm_gflops
from .flops import count_macs
from .metrics import agreement, classify

__all__ = [
    "BenchResult",
    "VariantResult",
    "agreement",
    "benchmark",
    "classify",
    "count_macs",
    "environment",
    "gemm_gflops",
]
