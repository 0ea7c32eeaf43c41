"""HiPrune — "HiPrune: Training-Free Visual Token Pruning via Hierarchical Attention in Vision-Language
Models" (Liu et al., 2025), adapted to ViT classification.

The paper prunes the visual tokens a VLM's vision encoder hands to its LLM, after the whole encoder has
run, keeping a budget ``N'`` of (§3): **anchor** tokens — the ``round(α·N'/5)`` highest-attention tokens
of an object-centric *middle* layer; **buffer** tokens — the 4 spatial neighbours of each anchor (so
anchors + buffers ≈ α·N', α = 0.1); **register** tokens — the highest-attention tokens of a *deep*
layer, filling the rest of the budget. The attention score is the attention each token *receives*,
averaged over heads and queries (the reference code's "global attention"), so no [CLS] is needed.

Adaptation to a classifier (deliberate): the reduction must happen inside the forward to save compute,
so the deep layer cannot be the last one. vitkit records the object-layer score at ``object_layer``
(default ``int(0.25·depth)``, block 3 of 12) and, at ``register_layer`` (default
``round(0.4·depth)``, block 5 of 12), takes the register score from that block's attention and prunes
right after it (before its MLP); the remaining blocks run on ``N'`` patch tokens plus all prefix tokens
(cls/dist/registers, always kept). Buffers respect the grid borders (the reference code's ±1 / ±W index
shifts wrap across rows). The budget is fixed per image so batches keep one shape: when buffers overlap,
more register tokens are taken. ``score="cls"`` ranks by [CLS] attention instead (cheaper: one query
row), the variant the reference code left commented out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..adapters import adapter_for
from ..configs import TransformConfig
from ..errors import ConfigError, UnsupportedModelError
from ..ops.token_merging import hiprune_select
from ..registry import register_transform
from ..validate import check_choice, check_int, check_number
from .patch import Reducer, TokenContext, check_not_patched, patch_model, plan_tokens, token_summary


@dataclass(frozen=True)
class HiPruneConfig(TransformConfig):
    """HiPrune. ``keep``: token budget N' as a fraction of the patch tokens, in (0, 1]; ``alpha``: share of
    the budget for anchors + buffers; ``object_layer`` / ``register_layer``: block indices (None = 25 % /
    40 % of the depth); ``score``: ``"global"`` (attention received) or ``"cls"`` ([CLS] attention)."""

    keep: float = 0.33
    alpha: float = 0.1
    object_layer: int | None = None
    register_layer: int | None = None
    score: str = "global"

    def validate(self) -> None:
        check_number(self.keep, "HiPruneConfig.keep", low=0, high=1, low_open=True)
        check_number(self.alpha, "HiPruneConfig.alpha", low=0, high=1)
        check_choice(self.score, "HiPruneConfig.score", ("global", "cls"))
        for name in ("object_layer", "register_layer"):
            check_int(getattr(self, name), f"HiPruneConfig.{name}", low=0, optional=True, why=" (a block index)")


def hiprune_layers(cfg: HiPruneConfig, depth: int) -> tuple[int, int]:
    obj = int(0.25 * depth) if cfg.object_layer is None else cfg.object_layer
    reg = int(round(0.4 * depth)) if cfg.register_layer is None else cfg.register_layer
    reg = max(reg, obj)
    if reg >= depth:
        raise ConfigError(f"HiPruneConfig: register_layer {reg} is out of range for a model with {depth} blocks")
    return obj, reg


class HiPruneReducer(Reducer):
    """One per role: the object layer stores its score; the register layer selects and prunes."""

    def __init__(self, role: str, keep: float, alpha: float, score: str, also_object: bool = False) -> None:
        self.role, self.keep, self.alpha, self.score = role, float(keep), float(alpha), score
        self.also_object = also_object  # object and register layer are the same block

    def budget(self, t: int) -> int:
        return max(1, min(t, int(math.floor(self.keep * t + 0.5))))

    def removal(self, num_patch_tokens: int) -> int:
        return num_patch_tokens - self.budget(num_patch_tokens) if self.role == "register" else 0

    def needs(self, num_patch_tokens: int) -> frozenset[str]:
        if self.role == "register" and self.removal(num_patch_tokens) == 0:
            return frozenset()
        return frozenset({"global_attn" if self.score == "global" else "cls_attn"})

    def _score(self, extras: dict, ctx: TokenContext) -> torch.Tensor:
        key = "global_attn" if self.score == "global" else "cls_attn"
        return extras[key][:, ctx.num_prefix :]  # [B, T]

    def reduce(self, x: torch.Tensor, extras: dict, ctx: TokenContext):
        score = self._score(extras, ctx)
        if self.role == "object":
            ctx.store["hiprune_object"] = score
            return None
        obj = score if self.also_object else ctx.store.get("hiprune_object", score)
        t = x.shape[1] - ctx.num_prefix
        red = hiprune_select(obj, score, self.budget(t), ctx.grid, alpha=self.alpha, num_protected=ctx.num_prefix)
        return red, None

    def __repr__(self) -> str:
        return f"HiPruneReducer({self.role}, keep={self.keep})"


@register_transform(
    HiPruneConfig,
    name="hiprune",
    kind="runtime",
    paper="HiPrune: Training-Free Visual Token Pruning via Hierarchical Attention in Vision-Language Models "
    "(Liu et al., 2025)",
    example={"keep": 0.5},
    zero={"keep": 1.0},
)
def apply_hiprune(model, cfg: HiPruneConfig, *, calib=None, dry_run: bool = False) -> dict:
    host = adapter_for(model)
    info = host.describe(model)
    if cfg.targets is not None or cfg.skip:
        raise ConfigError(
            "HiPruneConfig prunes once: choose the blocks with object_layer/register_layer, not targets/skip"
        )
    if cfg.score == "cls" and not info.has_class_token:
        raise UnsupportedModelError("HiPrune score='cls' needs a class token; this model has none: use score='global'")
    obj, reg = hiprune_layers(cfg, info.depth)
    reducers: list[Reducer | None] = [None] * info.depth
    if cfg.keep < 1.0:
        if obj != reg:
            reducers[obj] = HiPruneReducer("object", cfg.keep, cfg.alpha, cfg.score)
        reducers[reg] = HiPruneReducer("register", cfg.keep, cfg.alpha, cfg.score, also_object=obj == reg)
    removed, counts = plan_tokens(info.num_tokens, host.prefix_tokens(model), reducers)
    decisions = {
        "summary": token_summary("removed", removed, counts) + f"; object layer {obj}, register layer {reg}",
        "object_layer": obj,
        "register_layer": reg,
        "budget": int(info.num_patches - removed[reg]),
        "removed_per_layer": removed,
        "tokens_per_layer": counts,
    }
    if dry_run:
        return decisions
    check_not_patched(model)
    patch_model(model, "HiPrune", reducers, prop_attn=False)
    return decisions


__all__ = ["HiPruneConfig", "HiPruneReducer", "apply_hiprune"]
