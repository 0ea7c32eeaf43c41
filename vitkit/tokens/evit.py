"""EViT — "Not All Patches are What You Need: Expediting Vision Transformers via Token Reorganizations"
(Liang et al., ICLR 2022).

At a few blocks (default the paper's 4th, 7th and 10th of 12, scaled to the model's depth), after
attention, the ``ceil(keep_rate · T)`` patch tokens with the highest [CLS] attention (Eq. 4, mean over
heads) are kept and the inattentive rest is fused into one token (Eq. 5). Applied training-free here.

Deliberate differences: the fused token is the attention-*normalised* weighted mean
``Σ aᵢxᵢ / Σ aᵢ`` — the paper's unnormalised ``Σ aᵢxᵢ`` has the wrong scale for an off-the-shelf model
(EViT learns to cope during training); fused tokens carry their size, so with ``prop_attn=True``
(off by default, as in the paper) they get proportional attention. Distilled models rank by the [CLS]
row. Models without a class token are refused (EViT's score is the [CLS] attention): use ToMe, PiToMe or
HiPrune (whose global-attention score needs no [CLS]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..adapters import adapter_for
from ..configs import TransformConfig, resolve_schedule, select_names
from ..errors import ConfigError, UnsupportedModelError
from ..ops.token_merging import evit_select
from ..registry import register_transform
from ..validate import check_number, is_int
from .patch import Reducer, TokenContext, check_not_patched, patch_model, plan_tokens, token_summary


def default_locations(depth: int) -> tuple[int, ...]:
    """EViT's 3rd/6th/9th-of-12 placement (0-based 3, 6, 9) scaled to ``depth``."""
    return tuple(sorted({min(depth - 1, int(round(depth * f))) for f in (0.25, 0.5, 0.75)}))


@dataclass(frozen=True)
class EViTConfig(TransformConfig):
    """EViT top-k by [CLS] attention. ``keep_rate`` in (0, 1] at each of ``locations`` (block indices;
    default: a quarter, half and three quarters of the depth), or a per-layer schedule of rates (then
    layers with rate 1 do nothing and ``locations`` must be None); ``fuse``: fuse the rest into one token."""

    keep_rate: float | tuple | dict = 0.7
    locations: tuple[int, ...] | None = None
    fuse: bool = True
    prop_attn: bool = False

    def validate(self) -> None:
        rates = self.keep_rate
        if isinstance(rates, dict):
            items = list(rates.get("at", {}).values()) + [v for k, v in rates.items() if k != "at"]
        elif isinstance(rates, list | tuple):
            items = list(rates)
        else:
            items = [rates]
        for v in items:
            check_number(v, "EViTConfig.keep_rate", low=0, high=1, low_open=True)
        if self.locations is not None:
            if not isinstance(rates, int | float):
                raise ConfigError("EViTConfig.locations goes with a single keep_rate; use a per-layer keep_rate alone")
            if not all(is_int(i) for i in self.locations):
                raise ConfigError(f"EViTConfig.locations must be block indices, got {self.locations!r}")


class EViTReducer(Reducer):
    """Keep ``ceil(rate·T)`` most [CLS]-attended patch tokens, fuse (or drop) the rest."""

    def __init__(self, keep_rate: float, fuse: bool) -> None:
        self.keep_rate = float(keep_rate)
        self.fuse = bool(fuse)

    def kept(self, t: int) -> int:
        return max(1, math.ceil(self.keep_rate * t - 1e-9))

    def removal(self, num_patch_tokens: int) -> int:
        t = num_patch_tokens
        k = self.kept(t)
        if k >= t or (self.fuse and k >= t - 1):
            return 0
        return t - k - int(self.fuse)

    def needs(self, num_patch_tokens: int) -> frozenset[str]:
        return frozenset({"cls_attn"}) if self.removal(num_patch_tokens) > 0 else frozenset()

    def reduce(self, x: torch.Tensor, extras: dict, ctx: TokenContext):
        cls_attn = extras["cls_attn"]  # [B, N]
        red = evit_select(cls_attn, self.kept(x.shape[1] - ctx.num_prefix), ctx.num_prefix, fuse=self.fuse)
        weight = cls_attn.clamp_min(1e-12).unsqueeze(-1) if red.src is not None else None  # [B, N, 1]
        return red, weight

    def __repr__(self) -> str:
        return f"EViTReducer(keep_rate={self.keep_rate}, fuse={self.fuse})"


def evit_rates(cfg: EViTConfig, depth: int) -> list[float]:
    if isinstance(cfg.keep_rate, int | float):
        locs = default_locations(depth) if cfg.locations is None else cfg.locations
        rates = [1.0] * depth
        for i in locs:
            if not -depth <= i < depth:
                raise ConfigError(f"EViTConfig.locations: block {i} is out of range for a model with {depth} blocks")
            rates[i] = float(cfg.keep_rate)
        return rates
    return [float(v) for v in resolve_schedule(cfg.keep_rate, depth, name="EViTConfig.keep_rate", default=1.0)]


@register_transform(
    EViTConfig,
    name="evit",
    kind="runtime",
    paper="Not All Patches are What You Need: Expediting Vision Transformers via Token Reorganizations "
    "(Liang et al., ICLR 2022)",
    example={"keep_rate": 0.7},
    zero={"keep_rate": 1.0},
)
def apply_evit(model, cfg: EViTConfig, *, calib=None, dry_run: bool = False) -> dict:
    host = adapter_for(model)
    info = host.describe(model)
    prefix = host.prefix_tokens(model)  # a host without a token sequence (windowed attention) refuses here
    if not info.has_class_token:
        raise UnsupportedModelError(
            "EViT ranks tokens by [CLS] attention but this model has no class token (global_pool="
            f"{info.global_pool!r}): use tome, pitome or hiprune instead"
        )
    chosen = set(select_names(info.block_names, cfg.targets, cfg.skip, what="blocks"))
    rates = evit_rates(cfg, info.depth)
    rates = [r if name in chosen else 1.0 for r, name in zip(rates, info.block_names, strict=True)]
    reducers = [EViTReducer(r, cfg.fuse) if r < 1.0 else None for r in rates]
    removed, counts = plan_tokens(info.num_tokens, prefix, reducers)
    decisions = {
        "summary": token_summary("keep_rate", rates, counts),
        "keep_rate_per_layer": rates,
        "removed_per_layer": removed,
        "tokens_per_layer": counts,
    }
    if dry_run:
        return decisions
    check_not_patched(model)
    patch_model(model, "EViT", reducers, prop_attn=cfg.prop_attn)
    return decisions


__all__ = ["EViTConfig", "EViTReducer", "apply_evit", "default_locations"]
