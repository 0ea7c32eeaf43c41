"""Task arithmetic (Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023, §2, Eq. 1):

    τ_t = θ_t − θ0,        θ = θ0 + λ Σ_t w_t τ_t          (λ = ``scaling``, w_t = ``weights``, default 1)

Per tensor, streamed (:func:`~vitkit.merging.core.stream_merge`); needs the pretrained base θ0.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..configs import TransformConfig
from ..ops import merging as ops
from ..registry import register_merge
from ..validate import check_number
from .core import MergeContext, per_model_weights, stream_merge


@dataclass(frozen=True)
class TaskArithmeticConfig(TransformConfig):
    """θ = θ0 + scaling · Σ_t w_t τ_t (Ilharco et al. 2023). ``weights`` (default all 1) are per-model multipliers
    and are *not* normalised; ``scaling=1/T`` with unit weights is the simple average."""

    scaling: float = 0.3
    weights: tuple[float, ...] | None = None

    def validate(self) -> None:
        check_number(self.scaling, "TaskArithmeticConfig.scaling")


@register_merge(
    "task_arithmetic", TaskArithmeticConfig, paper="Editing Models with Task Arithmetic (ICLR 2023)", needs_base=True
)
def merge_task_arithmetic(sources, base, cfg: TaskArithmeticConfig, ctx: MergeContext):
    w = [cfg.scaling * x for x in per_model_weights(cfg.weights, len(sources), "TaskArithmeticConfig")]

    def fn(k, ts, b):
        return ops.task_arithmetic(b, [ops.task_vector(t, b) for t in ts], w)

    return stream_merge(sources, base, cfg, fn, ctx.progress)
