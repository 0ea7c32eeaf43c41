"""PiToMe — "Accelerating Transformers with Spectrum-Preserving Token Merging" (Tran et al., NeurIPS 2024).

Each selected block, after attention, merges ``r = floor(T − T·ratio)`` of its ``T`` patch tokens (keep
ratio applied to the current count). Tokens are scored on the head-mean keys by the energy of Eq. 4,
``E_i = 1/N Σ_j f_m(cos(kᵢ, kⱼ))`` with ``f_m = ELU_α(· − m)`` as in the published code; the margin
decreases with depth, ``m_l = 0.75(1 − l/L)`` (the reference DeiT patch). Sorted by energy, the tokens
alternate into A and B. In the first ⌈L/2⌉ blocks ToMe's bipartite soft matching runs on that split (the
reference ``pitome_bsm``); in the others only the ``2r`` highest-energy tokens are mergeable, the rest —
isolated, informative — are protected, and every A token merges into its most similar B token (Alg. 1,
``pitome``). Size-weighted averages; proportional attention off by default, as in the reference DeiT patch
(``prop_attn=True`` turns it on). All prefix tokens are protected (the reference protects the cls token).

Measured on the ImageNet ViT-Ti (augreg, 200 test images, top-1 %, at ToMe's block-MAC ratio ×1.3/×1.5/×2):
vitkit's version-1 PiToMe (Eq. 4 as printed, Alg. 1 in every block, proportional attention) gave
84.0/77.5/70.5; this default gives 85.0/83.5/78.0 (ToMe 85.0/84.0/83.0). The matching schedule is most
of the gain (+3/+5.5/+8.5 alone).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..adapters import adapter_for
from ..configs import TransformConfig, resolve_schedule, select_names
from ..ops.token_merging import PITOME_ENERGIES, pitome_matching
from ..registry import register_transform
from ..validate import check_choice, check_number
from .patch import Reducer, TokenContext, check_not_patched, patch_model, plan_tokens, token_summary


def _items(value) -> list:
    if isinstance(value, dict):
        return list(value.get("at", {}).values()) + [v for k, v in value.items() if k != "at"]
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


PITOME_MATCHINGS = ("reference", "pitome", "bsm")


@dataclass(frozen=True)
class PiToMeConfig(TransformConfig):
    """PiToMe energy-guided merging (Tran et al., NeurIPS 2024, §3.2).

    ``ratio``: fraction of patch tokens kept by each block, in (0, 1] (scalar or per-layer schedule; 1 = no
    merge): a block with ``T`` patch tokens merges ``r = floor(T − T·ratio)`` (the reference's rule, applied
    to the current count, so the reduction is geometric); ``margin``: energy margin per layer (None =
    ``0.75·(1 − l/L)``, the reference DeiT patch); ``alpha``: ELU slope below the margin; ``prop_attn``:
    proportional attention (ToMe §3) — off by default as in the published DeiT patch (version-1 configs
    had it on; on the ViT-Ti it changes top-1 by ≤ 1 % either way).

    ``energy`` — ``f_m`` of Eq. 4 (see :func:`vitkit.ops.token_merging.pitome_energy`):

    * ``"elu"`` (default): ``ELU_α(cos − m)``, the published code (``algo/pitome/merge.py``).
    * ``"eq4"``: Eq. 4 as printed, ``cos`` (not ``cos − m``) at or above the margin; version-1 configs
      meant this.

    ``matching`` — how the energy-ordered tokens are matched per block:

    * ``"reference"`` (default): the published DeiT patch (``algo/pitome/patch/deit.py``): ToMe bipartite
      soft matching with the energy-ordered A/B split (``pitome_bsm``) in the first ⌈L/2⌉ blocks, the
      PiToMe protect-then-merge step (Alg. 1, ``pitome``) in the rest.
    * ``"pitome"``: the protect-then-merge step (Alg. 1) in every block — vitkit's version-1 behaviour.
    * ``"bsm"``: the energy-ordered bipartite soft matching in every block.
    """

    # 2: ``energy``/``matching`` added and ``prop_attn`` off (reference code); v1 meant "eq4"/"pitome"/True
    version: ClassVar[int] = 2

    ratio: float | tuple | dict = 0.9
    margin: float | tuple | dict | None = None
    alpha: float = 1.0
    prop_attn: bool = False
    energy: str = "elu"
    matching: str = "reference"

    def validate(self) -> None:
        for v in _items(self.ratio):
            check_number(v, "PiToMeConfig.ratio", low=0, high=1, low_open=True)
        if self.margin is not None:
            for v in _items(self.margin):
                check_number(v, "PiToMeConfig.margin", low=-1, high=1, why=" (a cosine)")
        check_number(self.alpha, "PiToMeConfig.alpha", low=0, low_open=True)
        check_choice(self.energy, "PiToMeConfig.energy", PITOME_ENERGIES, why=" ('elu' = the published code)")
        check_choice(
            self.matching, "PiToMeConfig.matching", PITOME_MATCHINGS, why=" ('reference' = the published DeiT patch)"
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, *, version: int | None = None) -> PiToMeConfig:
        """As :meth:`TransformConfig.from_dict`; a version-1 config keeps the energy (``"eq4"``), matching
        (``"pitome"``) and proportional attention (on) it was made with, so old artifacts reload identically."""
        data = dict(data or {})
        stored = data.get("version", version)
        if stored is not None and int(stored) < 2:
            data.setdefault("energy", "eq4")
            data.setdefault("matching", "pitome")
            data.setdefault("prop_attn", True)
        return super().from_dict(data, version=version)


class PiToMeReducer(Reducer):
    def __init__(self, ratio: float, margin: float, alpha: float, energy: str = "elu", split: str = "pitome") -> None:
        self.ratio, self.margin, self.alpha = float(ratio), float(margin), float(alpha)
        self.energy, self.split = energy, split

    def removal(self, num_patch_tokens: int) -> int:
        t = num_patch_tokens
        return min(int(math.floor(t - t * self.ratio + 1e-9)), t // 2)

    def needs(self, num_patch_tokens: int) -> frozenset[str]:
        return frozenset({"metric"}) if self.removal(num_patch_tokens) > 0 else frozenset()

    def reduce(self, x: torch.Tensor, extras: dict, ctx: TokenContext):
        r = self.removal(x.shape[1] - ctx.num_prefix)
        red = pitome_matching(
            extras["metric"],
            r,
            ctx.num_prefix,
            margin=self.margin,
            alpha=self.alpha,
            energy=self.energy,
            split=self.split,
        )
        return red, None

    def __repr__(self) -> str:
        return (
            f"PiToMeReducer(ratio={self.ratio}, margin={self.margin:.3f}, energy={self.energy!r}, split={self.split!r})"
        )


def pitome_margins(cfg: PiToMeConfig, depth: int) -> list[float]:
    if cfg.margin is None:
        return [0.75 * (1 - i / depth) for i in range(depth)]
    return [float(v) for v in resolve_schedule(cfg.margin, depth, name="PiToMeConfig.margin")]


def pitome_splits(cfg: PiToMeConfig, depth: int) -> list[str]:
    """Per-block matching: ``"bsm"`` or ``"pitome"`` (see :class:`PiToMeConfig` ``matching``)."""
    if cfg.matching == "reference":
        n_bsm = math.ceil(depth / 2)
        return ["bsm"] * n_bsm + ["pitome"] * (depth - n_bsm)
    return [cfg.matching] * depth


@register_transform(
    PiToMeConfig,
    name="pitome",
    kind="runtime",
    paper="Accelerating Transformers with Spectrum-Preserving Token Merging (Tran et al., NeurIPS 2024)",
    example={"ratio": 0.8},
    zero={"ratio": 1.0},
)
def apply_pitome(model, cfg: PiToMeConfig, *, calib=None, dry_run: bool = False) -> dict:
    host = adapter_for(model)
    info = host.describe(model)
    chosen = set(select_names(info.block_names, cfg.targets, cfg.skip, what="blocks"))
    ratios = [float(v) for v in resolve_schedule(cfg.ratio, info.depth, name="PiToMeConfig.ratio")]
    ratios = [r if name in chosen else 1.0 for r, name in zip(ratios, info.block_names, strict=True)]
    margins = pitome_margins(cfg, info.depth)
    splits = pitome_splits(cfg, info.depth)
    reducers = [
        PiToMeReducer(r, m, cfg.alpha, cfg.energy, sp) if r < 1.0 else None
        for r, m, sp in zip(ratios, margins, splits, strict=True)
    ]
    removed, counts = plan_tokens(info.num_tokens, host.prefix_tokens(model), reducers)
    decisions = {
        "summary": token_summary("r", removed, counts),
        "ratio_per_layer": ratios,
        "margin_per_layer": [round(m, 6) for m in margins],
        "matching_per_layer": [sp if red is not None else None for sp, red in zip(splits, reducers, strict=True)],
        "r_per_layer": removed,
        "tokens_per_layer": counts,
    }
    if dry_run:
        return decisions
    check_not_patched(model)
    patch_model(model, "PiToMe", reducers, prop_attn=cfg.prop_attn)
    return decisions


__all__ = ["PiToMeConfig", "PiToMeReducer", "apply_pitome"]
