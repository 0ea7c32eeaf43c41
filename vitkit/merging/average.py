"""Uniform / weighted model soup (Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models
improves accuracy without increasing inference time", ICML 2022, the uniform soup f(x, (1/k) Σ_i θ_i)):

    θ = Σ_i w_i θ_i / Σ_i w_i                (w_i = 1: the uniform soup)

Per tensor, streamed (:func:`~vitkit.merging.core.stream_merge`); no base is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..configs import TransformConfig
from ..errors import ConfigError
from ..ops import merging as ops
from ..registry import register_merge
from .core import MergeContext, per_model_weights, stream_merge


@dataclass(frozen=True)
class AverageConfig(TransformConfig):
    """Uniform (or weighted) soup: θ = Σ w_i θ_i / Σ w_i (Wortsman et al. 2022). ``weights=None`` = uniform.

    Weights are *normalised* to sum to 1 (documented choice); negative weights or a zero sum are errors.
    No base is needed (a given base is ignored except for tensors outside ``targets``).
    """

    weights: tuple[float, ...] | None = None

    def validate(self) -> None:
        if self.weights is not None:
            if any(float(w) < 0 for w in self.weights):
                raise ConfigError(f"AverageConfig.weights must be >= 0, got {list(self.weights)}")
            if sum(float(w) for w in self.weights) <= 0:
                raise ConfigError("AverageConfig.weights sum to 0: give at least one model a positive weight")


@register_merge("average", AverageConfig, paper="Model soups (Wortsman et al., ICML 2022)", needs_base=False)
def merge_average(sources, base, cfg: AverageConfig, ctx: MergeContext):
    """Uniform / weighted soup; weights are normalised to sum to 1."""
    w = per_model_weights(cfg.weights, len(sources), "AverageConfig")
    total = sum(w)
    w = [x / total for x in w]
    return stream_merge(sources, base, cfg, lambda k, ts, b: ops.weighted_average(ts, w), ctx.progress)
