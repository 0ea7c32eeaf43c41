"""TIES-Merging (Yadav et al., "TIES-Merging: Resolving Interference When Merging Models", NeurIPS 2023,
Algorithm 1): per tensor, (1) **trim** each task vector τ_t to its top-``density`` magnitudes, (2) **elect** the
sign γ = sgn(Σ_t τ̂_t), (3) **disjoint merge** τ_m = mean (or sum) of the entries agreeing with γ, then
θ = θ0 + λ τ_m (λ = ``scaling``). Streamed per tensor; needs the pretrained base θ0.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..configs import TransformConfig
from ..ops import merging as ops
from ..registry import register_merge
from ..validate import check_choice, check_number
from .core import MergeContext, stream_merge


@dataclass(frozen=True)
class TIESConfig(TransformConfig):
    """TIES-Merging (Yadav et al. 2023): trim to ``density`` per tensor, elect sign, disjoint ``aggregate``,
    θ = θ0 + scaling · τ_m. The paper's disjoint mean works with scaling ≈ 1; FusionBench uses sum + 0.3."""

    density: float = 0.2
    scaling: float = 1.0
    aggregate: str = "mean"

    def validate(self) -> None:
        check_number(self.density, "TIESConfig.density", low=0, high=1, low_open=True)
        check_choice(self.aggregate, "TIESConfig.aggregate", ("mean", "sum"))


@register_merge("ties", TIESConfig, paper="TIES-Merging (NeurIPS 2023)", needs_base=True)
def merge_ties(sources, base, cfg: TIESConfig, ctx: MergeContext):
    def fn(k, ts, b):
        tau = ops.ties_merge([ops.task_vector(t, b) for t in ts], cfg.density, aggregate=cfg.aggregate)
        return b + cfg.scaling * tau

    return stream_merge(sources, base, cfg, fn, ctx.progress)
