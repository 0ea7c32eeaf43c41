"""DARE — Drop And REscale (Yu et al., "Language Models are Super Mario", ICML 2024, §3, Eq. 2):

    m_t ~ Bernoulli(p),   τ̃_t = (1 − m_t) ⊙ τ_t,   τ̂_t = τ̃_t / (1 − p)

then task arithmetic θ = θ0 + λ Σ_t τ̂_t, or TIES' sign election + disjoint mean over the τ̂_t
(``combine="ties"``). The drop masks are seeded per (seed, model index, tensor name), so the same inputs give
the same merge, streamed or not.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from ..configs import TransformConfig
from ..ops import merging as ops
from ..registry import register_merge
from ..validate import check_choice, check_number
from .core import MergeContext, stream_merge


@dataclass(frozen=True)
class DAREConfig(TransformConfig):
    """DARE (Yu et al. 2024): drop each task-vector entry with prob. ``drop``, rescale by 1/(1−drop), then
    task arithmetic (``combine="task_arithmetic"``) or TIES sign election + disjoint mean (``"ties"``).
    Seeded per (seed, model index, tensor name): the same inputs give the same merge."""

    drop: float = 0.5
    scaling: float = 0.3
    combine: str = "task_arithmetic"
    rescale: bool = True
    seed: int = 0

    def validate(self) -> None:
        check_number(self.drop, "DAREConfig.drop", low=0, high=1, high_open=True)
        check_choice(self.combine, "DAREConfig.combine", ("task_arithmetic", "ties"))


def dare_generator(seed: int, model_index: int, name: str) -> torch.Generator:
    """A generator seeded from (seed, model index, tensor name): stable across runs and Python hash seeds."""
    return torch.Generator().manual_seed((seed * 1_000_003 + model_index * 7919 + zlib.crc32(name.encode())) % 2**63)


@register_merge("dare", DAREConfig, paper="Language Models are Super Mario (DARE, ICML 2024)", needs_base=True)
def merge_dare(sources, base, cfg: DAREConfig, ctx: MergeContext):
    def fn(k, ts, b):
        taus = [
            ops.dare_drop(ops.task_vector(t, b), cfg.drop, dare_generator(cfg.seed, i, k), rescale=cfg.rescale)
            for i, t in enumerate(ts)
        ]
        if cfg.combine == "ties":
            stacked = torch.stack(taus)  # [T, ...]
            tau = ops.ties_disjoint_merge(stacked, ops.ties_elect_sign(stacked), aggregate="mean")
            return b + cfg.scaling * tau
        return ops.task_arithmetic(b, taus, [cfg.scaling] * len(taus))

    return stream_merge(sources, base, cfg, fn, ctx.progress)
