"""PiToMe — "Accelerating Transformers with Spectrum-Preserving Token Merging" (Tran et al., NeurIPS 2024).

Each selected block, after attention, merges ``r = floor(T − T·ratio)`` of its ``T`` patch tokens:
tokens are scored by the energy of Eq. 4 (``E_i = 1/N Σ_j f_m(cos(kᵢ, kⱼ))`` on the head-mean keys, with
``f_m(x) = x`` above the margin ``m`` and ``α(exp(x − m) − 1)`` below); the ``2r`` highest-energy tokens
(those inside large clusters) are mergeable and every other token — isolated, informative — is
protected; the mergeable ones are split alternately *along the energy order* into A and B and every A
token merges into its most similar B token (ordered BSM, §3.2 / Alg. 1). Size-weighted averages and
proportional attention as in ToMe. The margin decreases with depth, ``m_l = m₀(1 − l/L)`` with m₀=0.75
(the reference DeiT patch), i.e. later layers call more pairs "similar".

Deliberate differences: only the PiToMe matching is used in every layer (the reference DeiT patch
uses ToMe-style BSM over energy-ordered tokens in the first half of the layers); all prefix tokens are
protected; proportional attention is actually applied (the reference timm path never passes sizes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..adapters.timm_vit import describe
from ..configs import TransformConfig, resolve_schedule, select_names
from ..errors import ConfigError
from ..ops.token_merging import pitome_matching
from ..registry import register_transform
from .patch import Reducer, TokenContext, check_not_patched, patch_model, plan_tokens, token_summary


def _items(value) -> list:
    if isinstance(value, dict):
        return list(value.get("at", {}).values()) + [v for k, v in value.items() if k != "at"]
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


@dataclass(frozen=True)
class PiToMeConfig(TransformConfig):
    """PiToMe energy-guided merging. ``ratio``: fraction of patch tokens kept per block, in (0, 1]
    (scalar or per-layer schedule; 1 = no merge); ``margin``: energy margin per layer (None = 0.75·(1−l/L));
    ``alpha``: ELU slope below the margin; ``prop_attn``: proportional attention."""

    ratio: float | tuple | dict = 0.9
    margin: float | tuple | dict | None = None
    alpha: float = 1.0
    prop_attn: bool = True

    def validate(self) -> None:
        for v in _items(self.ratio):
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < float(v) <= 1:
                raise ConfigError(f"PiToMeConfig.ratio must be in (0, 1], got {v!r}")
        if self.margin is not None:
            for v in _items(self.margin):
                if isinstance(v, bool) or not isinstance(v, int | float) or not -1 <= float(v) <= 1:
                    raise ConfigError(f"PiToMeConfig.margin must be a cosine in [-1, 1], got {v!r}")
        if not float(self.alpha) > 0:
            raise ConfigError(f"PiToMeConfig.alpha must be > 0, got {self.alpha}")


class PiToMeReducer(Reducer):
    def __init__(self, ratio: float, margin: float, alpha: float) -> None:
        self.ratio, self.margin, self.alpha = float(ratio), float(margin), float(alpha)

    def removal(self, num_patch_tokens: int) -> int:
        t = num_patch_tokens
        return min(int(math.floor(t - t * self.ratio + 1e-9)), t // 2)

    def needs(self, num_patch_tokens: int) -> frozenset[str]:
        return frozenset({"metric"}) if self.removal(num_patch_tokens) > 0 else frozenset()

    def reduce(self, x: torch.Tensor, extras: dict, ctx: TokenContext):
        r = self.removal(x.shape[1] - ctx.num_prefix)
        return pitome_matching(extras["metric"], r, ctx.num_prefix, margin=self.margin, alpha=self.alpha), None

    def __repr__(self) -> str:
        return f"PiToMeReducer(ratio={self.ratio}, margin={self.margin:.3f})"


def pitome_margins(cfg: PiToMeConfig, depth: int) -> list[float]:
    if cfg.margin is None:
        return [0.75 * (1 - i / depth) for i in range(depth)]
    return [float(v) for v in resolve_schedule(cfg.margin, depth, name="PiToMeConfig.margin")]


@register_transform(
    PiToMeConfig,
    name="pitome",
    kind="runtime",
    paper="Accelerating Transformers with Spectrum-Preserving Token Merging (Tran et al., NeurIPS 2024)",
)
def apply_pitome(model, cfg: PiToMeConfig, *, calib=None, dry_run: bool = False) -> dict:
    info = describe(model)
    chosen = set(select_names(info.block_names, cfg.targets, cfg.skip, what="blocks"))
    ratios = [float(v) for v in resolve_schedule(cfg.ratio, info.depth, name="PiToMeConfig.ratio")]
    ratios = [r if name in chosen else 1.0 for r, name in zip(ratios, info.block_names, strict=True)]
    margins = pitome_margins(cfg, info.depth)
    reducers = [PiToMeReducer(r, m, cfg.alpha) if r < 1.0 else None for r, m in zip(ratios, margins, strict=True)]
    removed, counts = plan_tokens(info.num_tokens, info.num_prefix_tokens, reducers)
    decisions = {
        "summary": token_summary("r", removed, counts),
        "ratio_per_layer": ratios,
        "margin_per_layer": [round(m, 6) for m in margins],
        "r_per_layer": removed,
        "tokens_per_layer": counts,
    }
    if dry_run:
        return decisions
    check_not_patched(model)
    patch_model(model, "PiToMe", reducers, prop_attn=cfg.prop_attn)
    return decisions


__all__ = ["PiToMeConfig", "PiToMeReducer", "apply_pitome"]
