"""Greedy soup (Wortsman et al., "Model soups", ICML 2022, Recipe 1 "GreedySoup"): sort the fine-tuned models by
held-out score, then add each to the soup (the uniform average of its ingredients) only if the soup's held-out
score does not drop. Runs the network: needs ``evaluate=`` (model → score, higher is better).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..configs import TransformConfig
from ..registry import register_merge
from .core import MergeContext, load_into, materialize, selected_keys
from .sources import check_compatible


@dataclass(frozen=True)
class GreedySoupConfig(TransformConfig):
    """Greedy soup (Wortsman et al. 2022, Recipe 1): needs ``evaluate=`` (model → held-out score, higher better)."""


@register_merge(
    "greedy_soup",
    GreedySoupConfig,
    paper="Model soups (Wortsman et al., ICML 2022), greedy recipe",
    needs_base=False,
    needs=("evaluate",),
)
def merge_greedy_soup(sources, base, cfg: GreedySoupConfig, ctx: MergeContext):
    """Sort ingredients by their own held-out score; add each to the soup if the soup's score does not drop.

    Keeps a running sum of the soup: memory = template + sum + one candidate, constant in N. ``ctx.info``
    receives ``{"order", "ingredients", "scores"}``.
    """
    keys = check_compatible(sources, base)
    chosen = selected_keys(keys, cfg)
    model = ctx.template("greedy_soup")
    ref = base if base is not None else sources[0]

    def score(sd: dict[str, torch.Tensor]) -> float:
        return float(ctx.evaluate(load_into(model, sd)))

    own = []
    for i, s in enumerate(sources):
        own.append(score(materialize(s, keys)))
        if ctx.progress:
            ctx.progress(i + 1, 2 * len(sources), f"scoring {s.label}")
    order = sorted(range(len(sources)), key=lambda i: -own[i])
    soup_sum = materialize(sources[order[0]], keys)
    members, best = [order[0]], own[order[0]]
    for j, i in enumerate(order[1:]):
        cand_sum = {k: soup_sum[k] + sources[i].get(k).float() if k in chosen else soup_sum[k] for k in keys}
        n = len(members) + 1
        cand = {k: cand_sum[k] / n if k in chosen else ref.get(k) for k in keys}
        val = score(cand)
        if val >= best:
            soup_sum, best = cand_sum, val
            members.append(i)
        if ctx.progress:
            ctx.progress(len(sources) + j + 2, 2 * len(sources), f"soup of {len(members)}")
    ctx.info.update(order=order, ingredients=members, scores=own, soup_score=best)
    n = len(members)
    out = {}
    for k in keys:
        out[k] = (soup_sum[k] / n).to(ref.dtype(k)) if k in chosen else ref.get(k).clone()
    return out
