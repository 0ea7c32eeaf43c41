"""ToMe — "Token Merging: Your ViT But Faster" (Bolya et al., ICLR 2023).

In every selected block, between attention and MLP, ``r`` tokens are merged by bipartite soft matching on
the attention keys (§3), with size-weighted averaging and proportional attention
``softmax(QKᵀ/√d + log s)`` (§3, "Tracking source / proportional attention"). Differences from the
reference code, all deliberate: LayerScale, qk-norm, scale-norm, gated attention and ``attn_head_dim``
are honoured; the fused SDPA kernel is kept; *all* prefix tokens (cls, dist, registers) are protected
(the reference protects cls and dist only); avg-pool models pool with token sizes as weights; the
metric is the keys after ``k_norm`` (what attention actually sees); the unmerged A tokens are not
re-sorted by position (token order carries no meaning past the prefix).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from ..adapters.timm_vit import describe
from ..configs import TransformConfig, resolve_schedule, select_names
from ..errors import ConfigError
from ..ops.token_merging import bipartite_soft_matching
from ..registry import register_transform
from .patch import Reducer, TokenContext, capped_schedule, check_not_patched, patch_model, token_summary

_log = logging.getLogger(__name__)


def validate_int_schedule(value: Any, name: str) -> None:
    """Ints ≥ 0 as a scalar, per-layer list, {'start','end'} ramp or {'at','default'} map."""
    if isinstance(value, dict):
        items = list(value.get("at", {}).values()) + [v for k, v in value.items() if k != "at"]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        items = [value]
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"{name} must be a non-negative int (or a per-layer schedule of them), got {v!r}")


def tome_schedule(r: Any, inflect: float | None, depth: int) -> list[int]:
    """Per-layer r. ``inflect`` (ToMe's schedule): a linear ramp from ``int(r·(1−inflect))`` to
    ``2r − start`` with the same mean r; ``inflect=-1`` gives the paper's decreasing schedule (2r → 0)."""
    if inflect is None:
        return [int(v) for v in resolve_schedule(r, depth, name="ToMeConfig.r")]
    start = int(r * (1.0 - inflect))
    end = 2 * r - start
    if depth == 1:
        return [max(0, int(r))]
    step = (end - start) / (depth - 1)
    return [max(0, int(start + step * i)) for i in range(depth)]


@dataclass(frozen=True)
class ToMeConfig(TransformConfig):
    """Token Merging. ``r``: tokens merged per block (int, per-layer list, ``{"start","end"}`` ramp or
    ``{"at": {layer: r}, "default": r}``); ``inflect``: ToMe's (r, inflection) schedule on top of an int r
    (-1 = decreasing); ``prop_attn``: proportional attention (on for supervised models, off for MAE)."""

    r: int | tuple | dict = 8
    inflect: float | None = None
    prop_attn: bool = True

    def validate(self) -> None:
        validate_int_schedule(self.r, "ToMeConfig.r")
        if self.inflect is not None:
            if not isinstance(self.r, int):
                raise ConfigError("ToMeConfig.inflect needs an int r (it builds the per-layer schedule itself)")
            if not -1.0 <= float(self.inflect) <= 1.0:
                raise ConfigError(f"ToMeConfig.inflect must be in [-1, 1], got {self.inflect}")


class ToMeReducer(Reducer):
    """Merge ``r`` tokens after this block's attention (capped at half the patch tokens)."""

    def __init__(self, r: int) -> None:
        self.r = int(r)

    def removal(self, num_patch_tokens: int) -> int:
        return min(self.r, num_patch_tokens // 2)

    def needs(self, num_patch_tokens: int) -> frozenset[str]:
        return frozenset({"metric"}) if self.removal(num_patch_tokens) > 0 else frozenset()

    def reduce(self, x: torch.Tensor, extras: dict, ctx: TokenContext):
        return bipartite_soft_matching(extras["metric"], self.r, ctx.num_prefix), None

    def __repr__(self) -> str:
        return f"ToMeReducer(r={self.r})"


@register_transform(
    ToMeConfig, name="tome", kind="runtime", paper="Token Merging: Your ViT But Faster (Bolya et al., ICLR 2023)"
)
def apply_tome(model, cfg: ToMeConfig, *, calib=None, dry_run: bool = False) -> dict:
    info = describe(model)
    chosen = set(select_names(info.block_names, cfg.targets, cfg.skip, what="blocks"))
    sched = tome_schedule(cfg.r, cfg.inflect, info.depth)
    sched = [r if name in chosen else 0 for r, name in zip(sched, info.block_names, strict=True)]
    sched, counts = capped_schedule(sched, info.num_tokens, info.num_prefix_tokens, lambda t: t // 2, what="r")
    decisions = {
        "summary": token_summary("r", sched, counts),
        "r_per_layer": sched,
        "tokens_per_layer": counts,
    }
    if dry_run:
        return decisions
    check_not_patched(model)
    patch_model(model, "ToMe", [ToMeReducer(r) if r > 0 else None for r in sched], prop_attn=cfg.prop_attn)
    return decisions


__all__ = ["ToMeConfig", "ToMeReducer", "apply_tome", "tome_schedule", "validate_int_schedule"]
