"""BENCHMARKS.md is shared by several scripts: each owns one section between HTML-comment markers."""

from __future__ import annotations

from pathlib import Path

from .._io import atomic_write_text

HEADER = (
    "# vitkit benchmarks\n\n"
    "Written by the scripts in `benchmarks/` (each owns one section; rerun a script to refresh it). Ratios are\n"
    "measured in one process, variants interleaved, medians of repeats, at a fixed thread count.\n"
)


def write_section(name: str, body: str, path: str | Path = "BENCHMARKS.md") -> Path:
    """Replace (or append) the ``name`` section of ``path``, keeping every other section intact."""
    path = Path(path)
    text = path.read_text() if path.exists() else HEADER
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    return atomic_write_text(path, text)


def env_lines(env: dict) -> str:
    keys = ("date", "cpu", "isa", "cores", "threads", "torch", "timm", "python", "vitkit")
    keys += ("gemm_gflops", "gemm_gops_512")
    return "\n".join(f"- {k}: {env_value(env[k])}" for k in keys if k in env)


def env_value(value) -> str:
    """One environment entry as report text (the per-dtype GEMM probe as ``fp32 207.5, bf16 820.8, ...``)."""
    if isinstance(value, dict):  # the per-dtype GEMM probe
        return ", ".join(f"{k} {'n/a' if v is None else v}" for k, v in value.items())
    return str(value)
