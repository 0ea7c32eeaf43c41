"""Reduced-precision execution in PyTorch: ``PrecisionConfig(dtype="bf16")`` runs the whole model in bfloat16.

bfloat16 keeps fp32's 8-bit exponent with a 7-bit mantissa (Kalamkar et al., "A Study of BFLOAT16 for Deep Learning
Training", 2019, §2), so a ViT runs without scaling or calibration; CPUs with native bf16 dot products
(AVX512_BF16, AMX-BF16) execute ``torch.mm`` on it at several times the fp32 rate, CPUs without emulate it and are
slower than fp32. So the step *measures* before it commits: a bf16 and an fp32 GEMM probe on this machine, and a
machine where bf16 is not faster is refused with both figures (``require_native=False`` overrides).

What changes (``__class__`` swap): parameters and buffers become bfloat16 and the model becomes ``BF16<Class>``, whose
``forward`` casts the input to bfloat16 and returns fp32 logits, so callers, reports and later steps (token reduction,
early exit) see the same interface. PyTorch's fused ``scaled_dot_product_attention`` runs in bf16 unchanged. A
*numerics* step: after pruning and merging, before token reduction; not combined with fake-quant PTQ.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..adapters.runtime import DTYPE_ATTR, reduced_dtype
from ..bench.env import cpu_features, gemm_probe
from ..configs import TransformConfig
from ..errors import ConfigError, HardwareError
from ..patching import mixin_class
from ..registry import register_transform
from ..validate import check_bool, check_choice
from .modules import quantizers

_log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class PrecisionConfig(TransformConfig):
    """Run the model in ``dtype`` (``"bf16"``, or ``"fp32"``: unchanged). ``require_native``: refuse when a bf16
    GEMM is not faster than an fp32 one on this machine (measured when the step runs)."""

    dtype: str = "bf16"
    require_native: bool = True

    def validate(self) -> None:
        check_choice(self.dtype, "PrecisionConfig.dtype", DTYPES)
        check_bool(self.require_native, "PrecisionConfig.require_native")


class ReducedPrecisionMixin(nn.Module):
    """Placed before the model's own class: cast the input to the parameters' dtype, return fp32 outputs."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any):
        out = super().forward(x.to(reduced_dtype(self)), *args, **kwargs)
        if isinstance(out, tuple):  # distilled DeiT in training mode: (cls logits, dist logits)
            return tuple(o.float() for o in out)
        return out.float()


def native_bf16() -> dict[str, Any]:
    """Whether bf16 matmuls pay on this machine: the ISA flags and a bf16 vs fp32 GEMM probe (G(FL)OP/s)."""
    probe = gemm_probe()
    features = cpu_features()
    fast = probe.get("bf16") is not None and probe["bf16"] > probe["fp32"]
    return {"native": fast, "isa": features, "gemm_gops": probe}


def _cast(model: nn.Module, dtype: torch.dtype) -> None:
    model.to(dtype)
    model.__class__ = mixin_class(ReducedPrecisionMixin, type(model), f"BF16{type(model).__name__}", module=__name__)
    setattr(model, DTYPE_ATTR, dtype)


def _restore(model: nn.Module, cfg: PrecisionConfig, decisions: dict) -> None:
    if cfg.dtype != "fp32":
        _cast(model, DTYPES[cfg.dtype])


@register_transform(
    PrecisionConfig,
    name="precision",
    kind="numerics",
    paper="bfloat16 (Kalamkar et al., 2019); measured per machine",
    restore=_restore,
    example={"dtype": "bf16", "require_native": False},
    zero={"dtype": "fp32"},
)
def apply_precision(model: nn.Module, cfg: PrecisionConfig, *, calib=None, dry_run: bool = False) -> dict[str, Any]:
    if quantizers(model):
        raise ConfigError("precision on a fake-quant ptq model: use one numerics step (ptq or precision), not both")
    if reduced_dtype(model) is not None:
        raise ConfigError(f"model already runs in {reduced_dtype(model)}: apply precision once, to a float model")
    if cfg.dtype == "fp32":
        return {"dtype": "fp32", "summary": "fp32: unchanged"}
    machine = native_bf16()
    probe, isa = machine["gemm_gops"], " ".join(machine["isa"]) or "unknown"
    if cfg.require_native and not machine["native"]:
        raise HardwareError(
            f"bf16 is not faster than fp32 on this machine (GEMM bf16 {probe['bf16']} vs fp32 {probe['fp32']} "
            f"GOP/s; ISA: {isa}): deploy int8 with ONNX Runtime instead, or set require_native: false"
        )
    decisions = {
        "dtype": cfg.dtype,
        "native": machine["native"],
        "isa": isa,
        "gemm_gops": probe,
        "summary": f"{cfg.dtype} weights and activations (GEMM bf16 {probe['bf16']} vs fp32 {probe['fp32']} GOP/s)",
    }
    if not dry_run:
        _cast(model, DTYPES[cfg.dtype])
    return decisions
