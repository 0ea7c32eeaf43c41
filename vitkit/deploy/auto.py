"""``runtime: auto`` — measure the candidate runtimes on this machine, on the model itself, and keep the fastest one
within the accuracy budget.

Nothing about which path wins is assumed: a candidate whose kernels this machine or installation lacks is left out
*on a measurement* (the per-dtype GEMM probe of :func:`vitkit.bench.env.gemm_probe`: bf16 candidates need a bf16
GEMM faster than fp32, ``torch._int_mm`` candidates an int8 GEMM faster than fp32; ORT candidates need
onnxruntime), every other one is built from the model, scored against the fp32 model on the evaluation images
(top-1 drop in points when labels are given, else disagreement with fp32), and timed interleaved with the others
in one process (median of short repeats). The fastest candidate whose drop is within ``max_drop`` wins; the table
of every candidate and the reason for the choice are kept (:class:`AutoChoice`), and the measurement is cached per
machine (CPU, ISA, threads, versions) and model (a hash of its state and input shape), so a second deployment
builds only the winner.

What the measurements said on the machines seen so far is in BENCHMARKS.md "hardware" (an AVX-512 + VNNI + BF16
CPU: ``torch-w8a8-bf16`` fastest; on AVX2 without VNNI ``torch._int_mm`` was 20× slower than fp32 and
``ort-int8`` won) — facts per machine, not rules in this code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .._io import atomic_write_text
from .._version import __version__
from ..bench.env import cpu_features, cpu_model, gemm_probe
from ..bench.timing import interleaved_times
from ..errors import ConfigError, DeployError, VitkitError
from ..models.fingerprint import model_fingerprint
from ..quant.modules import quantizers
from ..validate import check_int, check_number

_log = logging.getLogger(__name__)

#: candidate → (what it is, what it needs: ``bf16`` / ``int8mm`` GEMM faster than fp32, ``ort``, ``ptq``)
CANDIDATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "torch-fp32": ("PyTorch fp32 eager (the model as it is)", ()),
    "torch-compile": ("PyTorch fp32, torch.compile", ()),
    "torch-bf16": ("PyTorch bf16 (precision step), eager", ("bf16",)),
    "torch-w8a8": ("PyTorch W8A8 on torch._int_mm, static RepQ scales, torch.compile", ("int8mm",)),
    "torch-w8a8-bf16": ("torch-w8a8 with bf16 attention matmuls", ("int8mm", "bf16")),
    "torch-w8a8-onednn": ("torch-w8a8-bf16 on oneDNN qlinear (fused rescale/GELU/requant)", ("int8mm", "bf16")),
    "ort-fp32": ("ONNX Runtime fp32", ("ort",)),
    "ort-int8": ("ONNX Runtime dynamic int8 (RepQ fold, outlier channels float)", ("ort",)),
    "ort-qdq": ("ONNX Runtime QDQ W8A8 with the ptq step's scales", ("ort", "ptq")),
}
#: what ``auto`` tries unless told otherwise (``torch-compile`` adds a compile for ~5 % on the machines measured)
DEFAULT_CANDIDATES = (
    "torch-fp32",
    "torch-bf16",
    "torch-w8a8",
    "torch-w8a8-bf16",
    "torch-w8a8-onednn",
    "ort-fp32",
    "ort-int8",
    "ort-qdq",
)

CACHE_ENV = "VITKIT_CACHE"

#: what a candidate that cannot be built or run here raises; it is reported ``failed`` and the others go on
CANDIDATE_ERRORS = (VitkitError, RuntimeError, TypeError, ValueError, NotImplementedError)


def cache_dir() -> Path:
    """``$VITKIT_CACHE/auto-runtime`` (default ``~/.cache/vitkit/auto-runtime``)."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vitkit"
    return Path(root) / "auto-runtime"


@dataclass
class CandidateResult:
    runtime: str
    what: str
    status: str = "measured"  # measured | skipped | failed
    note: str = ""
    img_s: float | None = None
    speedup: float | None = None  # vs torch-fp32 in the same interleaved run
    top1: float | None = None
    agreement: float | None = None
    drop_pt: float | None = None  # top-1 drop (labels) or disagreement with fp32, in points (tables show −drop_pt)
    within_budget: bool = False


@dataclass
class AutoChoice:
    """The outcome of ``runtime: auto``: every candidate's figures, the winner and why."""

    chosen: str | None
    max_drop: float
    candidates: list[CandidateResult]
    reason: str
    machine: dict[str, Any] = field(default_factory=dict)
    metric: str = "top-1 drop"
    cached: bool = False
    key: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "candidates": [asdict(c) for c in self.candidates]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AutoChoice:
        return cls(**{**d, "candidates": [CandidateResult(**c) for c in d["candidates"]]})

    def markdown(self) -> str:
        delta = _delta_name(self.metric)
        head = f"| runtime | status | img/s | × vs torch-fp32 | {delta} (pt) | within {self.max_drop:g} pt |"
        lines = [head, "|---|---|---|---|---|---|"]
        for c in self.candidates:
            mark = "**chosen**" if c.runtime == self.chosen else ""
            status = c.status if not c.note else f"{c.status}: {c.note}"
            gain = None if c.drop_pt is None else 0.0 - c.drop_pt
            lines.append(
                f"| {c.runtime} {mark} | {status} | {_fmt(c.img_s, '.1f')} | {_fmt(c.speedup, '.2f', '×')} | "
                f"{_fmt(gain, '+.2f')} | {'yes' if c.within_budget else 'no'} |"
            )
        return "\n".join(lines + ["", self.reason])


def _delta_name(metric: str) -> str:
    """How tables name the signed change: ``Δ top-1`` (positive = better) or ``−disagreement``."""
    return "Δ top-1" if metric == "top-1 drop" else "−disagreement"


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:160]


def _fmt(v: float | None, spec: str, prefix: str = "") -> str:
    return "–" if v is None else f"{prefix}{v:{spec}}"


class NoRuntimeInBudget(DeployError):
    """``runtime: auto`` found no candidate within the accuracy budget; ``choice`` holds every candidate."""

    def __init__(self, message: str, choice: AutoChoice) -> None:
        super().__init__(message)
        self.choice = choice


def machine_facts(probe: dict[str, float | None] | None = None) -> dict[str, Any]:
    """CPU model, ISA flags, threads, versions and the per-dtype GEMM probe (measured unless given)."""
    return {
        "cpu": cpu_model(),
        "isa": cpu_features(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "vitkit": __version__,
        "gemm_gops": dict(probe if probe is not None else gemm_probe()),
    }


def unavailable(runtime: str, machine: dict[str, Any], model: nn.Module) -> str | None:
    """Why ``runtime`` cannot pay or run here (a measured or installed fact), or None."""
    needs = CANDIDATES[runtime][1]
    probe = machine["gemm_gops"]
    fp32 = probe.get("fp32") or 0.0
    for dtype, need in (("bf16", "bf16"), ("int8", "int8mm")):
        if need in needs and not (probe.get(dtype) or 0.0) > fp32:
            got = probe.get(dtype)
            return f"{dtype} GEMM {got if got is not None else 'unavailable'} vs fp32 {fp32} GOP/s on this machine"
    if "ort" in needs:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed (pip install onnxruntime)"
    if "ptq" in needs and not quantizers(model):
        return "needs a ptq step's calibrated scales"
    if runtime == "torch-bf16" and quantizers(model):
        return "a ptq model runs its int8 numerics (torch-w8a8, ort-qdq), not bf16"
    return None


def model_key(model: nn.Module, example: torch.Tensor, machine: dict[str, Any], extra: dict[str, Any]) -> str:
    """The cache key: the machine facts (probe excluded: it is noisy), the model's fingerprint, the input shape."""
    facts = {k: v for k, v in machine.items() if k != "gemm_gops"}
    blob = {"machine": facts, "shape": list(example.shape[1:]), "model": model_fingerprint(model), **extra}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:24]


def _score(runner: nn.Module, images: torch.Tensor, labels: torch.Tensor | None, ref: torch.Tensor, batch: int):
    preds = _preds(runner, images, batch)
    agree = float((preds == ref).float().mean())
    top1 = float((preds == labels).float().mean()) if labels is not None else None
    return top1, agree


def choose_runtime(
    model: nn.Module,
    build: Callable[[str, Path], nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    max_drop: float = 1.0,
    candidates: tuple[str, ...] | list[str] | None = None,
    batch: int = 16,
    repeats: int = 5,
    probe: dict[str, float | None] | None = None,
    cache: bool = True,
    workdir: Path | None = None,
) -> tuple[AutoChoice, dict[str, nn.Module]]:
    """Measure ``candidates`` (default :data:`DEFAULT_CANDIDATES`) built by ``build(runtime, dir)`` and choose.

    Returns the choice and the built runners by name (only the winner's when the choice came from the cache).
    Raises :class:`NoRuntimeInBudget` (with every candidate's figures) when none is within ``max_drop``.
    ``probe``: the per-dtype GEMM probe to decide availability (measured when None; tests fake it)."""
    check_number(max_drop, "max_drop", low=0.0)
    check_int(batch, "batch", low=1)
    names = list(candidates or DEFAULT_CANDIDATES)
    for n in names:
        if n not in CANDIDATES:
            raise ConfigError(f"unknown auto candidate {n!r}; valid: {', '.join(CANDIDATES)}")
    if "torch-fp32" not in names:
        names.insert(0, "torch-fp32")  # the reference every speed-up is measured against
    machine = machine_facts(probe)
    key = model_key(model, images, machine, {"candidates": names, "max_drop": max_drop, "n": len(images)})
    cached = _cache_read(key) if cache else None
    if cached is not None:
        _log.info("runtime auto: measurements from the cache (%s)", key)
        cached.cached = True
        if cached.chosen is None:
            raise NoRuntimeInBudget(_no_choice_message(cached), cached)
        runner = build(cached.chosen, workdir or Path(tempfile.mkdtemp(prefix="vitkit-auto-")))
        runner.auto_candidate = cached.chosen
        return cached, {cached.chosen: runner}
    results = [CandidateResult(n, CANDIDATES[n][0]) for n in names]
    runners: dict[str, nn.Module] = {}
    workdir = workdir or Path(tempfile.mkdtemp(prefix="vitkit-auto-"))
    for r in results:
        why = unavailable(r.runtime, machine, model)
        if why:
            r.status, r.note = "skipped", why
            continue
        try:
            t0 = time.perf_counter()
            runners[r.runtime] = build(r.runtime, workdir / r.runtime)
            runners[r.runtime].auto_candidate = r.runtime
            r.note = f"built in {time.perf_counter() - t0:.0f} s"
        except CANDIDATE_ERRORS as exc:
            r.status, r.note = "failed", _first_line(exc)
    ref_preds = _preds(model, images, batch)
    base_top1 = float((ref_preds == labels).float().mean()) if labels is not None else None
    for r in results:
        if r.runtime in runners:
            try:  # a compiled candidate compiles here, on its first call
                r.top1, r.agreement = _score(runners[r.runtime], images, labels, ref_preds, batch)
            except CANDIDATE_ERRORS as exc:
                r.status, r.note = "failed", _first_line(exc)
                del runners[r.runtime]
                continue
            r.drop_pt = 100 * (base_top1 - r.top1) if labels is not None else 100 * (1 - r.agreement)
            r.within_budget = r.drop_pt <= max_drop + 1e-9
    if "torch-fp32" not in runners:
        raise DeployError(f"runtime auto: the model itself does not run ({results[0].note}): fix the model first")
    live = [r for r in results if r.runtime in runners]
    times = interleaved_times([runners[r.runtime] for r in live], images[:batch], repeats=repeats, warmup=2)
    base = statistics.median(times[0])
    for r, t in zip(live, times, strict=True):
        r.img_s = round(min(batch, len(images)) / statistics.median(t), 2)
        r.speedup = round(base / statistics.median(t), 3)
    choice = decide(results, max_drop, machine, "top-1 drop" if labels is not None else "disagreement", key)
    if cache:
        _cache_write(choice)
    if choice.chosen is None:
        raise NoRuntimeInBudget(_no_choice_message(choice), choice)
    return choice, runners


@torch.inference_mode()
def _preds(model: nn.Module, images: torch.Tensor, batch: int) -> torch.Tensor:
    model.eval()
    return torch.cat([model(images[i : i + batch]).float().argmax(-1) for i in range(0, len(images), batch)])


def decide(results: list[CandidateResult], max_drop: float, machine: dict, metric: str, key: str) -> AutoChoice:
    """The fastest measured candidate within ``max_drop`` and a sentence saying why."""
    ok = [r for r in results if r.within_budget and r.speedup is not None]
    isa = " ".join(machine.get("isa") or []) or "unknown ISA"
    if not ok:
        return AutoChoice(None, max_drop, results, "no candidate within the budget", machine, metric, key=key)
    best = max(ok, key=lambda r: r.speedup)
    faster = [r for r in results if r.speedup is not None and r.speedup > best.speedup]
    why = f"{best.runtime}: fastest within {max_drop:g} pt ({_delta_name(metric)} {0.0 - best.drop_pt:+.2f} pt, "
    why += f"×{best.speedup:.2f} vs PyTorch fp32 eager) on {machine.get('cpu', '?')} (ISA: {isa}), "
    why += f"{machine.get('threads')} threads"
    if faster:
        why += "; faster but over budget: " + ", ".join(f"{r.runtime} ({0.0 - r.drop_pt:+.2f} pt)" for r in faster)
    return AutoChoice(best.runtime, max_drop, results, why + ".", machine, metric, key=key)


def _no_choice_message(choice: AutoChoice) -> str:
    measured = [c for c in choice.candidates if c.drop_pt is not None]
    best = min(measured, key=lambda c: c.drop_pt) if measured else None
    closest = f" (closest: {best.runtime} at {0.0 - best.drop_pt:+.2f} pt)" if best else ""
    return (
        f"runtime auto: no candidate keeps the {choice.metric} within {choice.max_drop:g} pt{closest}: raise "
        "max_drop or choose a runtime explicitly"
    )


def _cache_read(key: str) -> AutoChoice | None:
    path = cache_dir() / f"{key}.json"
    try:
        return AutoChoice.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _cache_write(choice: AutoChoice) -> None:
    try:
        atomic_write_text(cache_dir() / f"{choice.key}.json", json.dumps(choice.to_dict(), indent=1) + "\n")
    except OSError as exc:  # a read-only home: the choice still stands, it is just measured again next time
        _log.warning("runtime auto: cannot cache the measurements (%s)", exc)


def keep_winner(choice: AutoChoice, runners: dict[str, nn.Module], workdir: Path, out_dir: Path | None) -> nn.Module:
    """The winner's runner; an ONNX winner's file moved from ``workdir`` into ``out_dir``, plus ``runtime.json``."""
    runner = runners[choice.chosen]
    runner.choice = choice
    if out_dir is None:
        return runner
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = getattr(runner, "path", None)
    if path is not None and Path(path).parent != out_dir:
        dst = out_dir / Path(path).name
        shutil.copyfile(path, str(dst) + ".tmp")
        os.replace(str(dst) + ".tmp", dst)
        runner.path = str(dst)
    atomic_write_text(out_dir / "runtime.json", json.dumps(choice.to_dict(), indent=1) + "\n")
    return runner
