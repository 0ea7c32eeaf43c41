"""Random token dropping: the control every token-reduction method must beat at the same token counts.

``RandomDropConfig(r=...)`` drops ``r`` uniformly random patch tokens per block (same schedule forms
as ToMe's ``r``), after attention, never touching prefix tokens. Pass ``seed`` for repeatable draws
(a generator seeded once at patch time, advanced by every forward).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..adapters import adapter_for
from ..configs import TransformConfig, select_names
from ..ops.token_merging import random_drop
from ..registry import register_transform
from ..validate import check_int
from .patch import Reducer, TokenContext, capped_schedule, check_not_patched, patch_model, token_summary
from .tome import tome_schedule, validate_int_schedule


@dataclass(frozen=True)
class RandomDropConfig(TransformConfig):
    """Random dropping control: ``r`` patch tokens per block (int or per-layer schedule); ``seed``."""

    r: int | tuple | dict = 8
    seed: int | None = 0

    def validate(self) -> None:
        validate_int_schedule(self.r, "RandomDropConfig.r")
        check_int(self.seed, "RandomDropConfig.seed", optional=True)


class RandomDropReducer(Reducer):
    def __init__(self, r: int, generator: torch.Generator | None) -> None:
        self.r, self.generator = int(r), generator

    def removal(self, num_patch_tokens: int) -> int:
        return max(0, min(self.r, num_patch_tokens - 1))

    def needs(self, num_patch_tokens: int) -> frozenset[str]:
        return frozenset({"tokens"}) if self.removal(num_patch_tokens) > 0 else frozenset()

    def reduce(self, x: torch.Tensor, extras: dict, ctx: TokenContext):
        gen = self.generator if self.generator is not None and x.device.type == "cpu" else None
        return random_drop(x.shape[0], x.shape[1], self.r, ctx.num_prefix, device=x.device, generator=gen), None


@register_transform(
    RandomDropConfig,
    name="random_drop",
    kind="runtime",
    paper="control: uniform random token dropping",
    example={"r": 2},
    zero={"r": 0},
)
def apply_random_drop(model, cfg: RandomDropConfig, *, calib=None, dry_run: bool = False) -> dict:
    host = adapter_for(model)
    info = host.describe(model)
    chosen = set(select_names(info.block_names, cfg.targets, cfg.skip, what="blocks"))
    sched = tome_schedule(cfg.r, None, info.depth)
    sched = [r if name in chosen else 0 for r, name in zip(sched, info.block_names, strict=True)]
    sched, counts = capped_schedule(sched, info.num_tokens, host.prefix_tokens(model), lambda t: t - 1, what="r")
    decisions = {"summary": token_summary("r", sched, counts), "r_per_layer": sched, "tokens_per_layer": counts}
    if dry_run:
        return decisions
    check_not_patched(model)
    gen = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None
    patch_model(model, "RandomDrop", [RandomDropReducer(r, gen) if r > 0 else None for r in sched], prop_attn=False)
    return decisions


__all__ = ["RandomDropConfig", "apply_random_drop"]
