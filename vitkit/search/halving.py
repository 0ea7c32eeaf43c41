"""Successive halving over recipe candidates (Jamieson & Talwalkar, AISTATS 2016; the fixed-budget bracket of
Hyperband, Li et al., JMLR 2018).

Algorithm, with rungs ``F_0 < F_1 < ... < F_{R-1}`` (fidelity = val images and timing repeats) and ``eta``:

1. ``n_0`` = the largest number of candidates such that ``sum_k n_k <= budget`` with ``n_{k+1} = ceil(n_k / eta)``
   (every evaluation at any rung counts as one); if the space is larger, a seeded random sample of ``n_0``.
2. Evaluate the ``n_k`` alive candidates at rung ``k``; rank them (:func:`rank_key`) and promote the best
   ``n_{k+1}`` to rung ``k + 1``. The last rung is the full-fidelity one; its results decide.

Ranking (multi-objective → one order): candidates within the accuracy budget first, best objective first; then the
others, smallest accuracy drop first. At a rung with ``n`` images, "within budget" allows ``200 / n`` extra points
(two images' worth: accuracy on few images is coarse); the last rung uses ``max_drop`` exactly.
Differs from the paper in that it ranks a constrained bi-objective score, not one loss.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConfigError

_log = logging.getLogger(__name__)

#: objective name → (metric key, +1 to maximize / -1 to minimize)
OBJECTIVES = {"throughput": ("speedup", 1), "latency": ("latency_ratio", 1), "size": ("size_bytes", -1)}


def rung_sizes(n0: int, rungs: int, eta: int) -> list[int]:
    sizes = [n0]
    for _ in range(rungs - 1):
        sizes.append(max(1, math.ceil(sizes[-1] / eta)))
    return sizes


def first_rung_size(n_space: int, budget: int, rungs: int, eta: int) -> int:
    """Largest ``n_0 <= n_space`` whose halving schedule fits in ``budget`` evaluations."""
    if budget < rungs:
        raise ConfigError(f"--budget {budget} is too small for {rungs} fidelity rungs: use --budget >= {rungs}")
    best = 1
    for n in range(1, n_space + 1):
        if sum(rung_sizes(n, rungs, eta)) <= budget:
            best = n
    return best


def within(metrics: dict[str, Any], max_drop: float, slack: float = 0.0) -> bool:
    return metrics["drop_pt"] <= max_drop + slack + 1e-9


def rank_key(metrics: dict[str, Any], objective: str, max_drop: float, slack: float = 0.0) -> tuple:
    """Sort key (ascending = better): within budget first by objective, then the rest by accuracy drop."""
    key, sign = OBJECTIVES[objective]
    if within(metrics, max_drop, slack):
        return (0, -sign * float(metrics[key]), metrics["drop_pt"])
    return (1, metrics["drop_pt"], -sign * float(metrics[key]))


def successive_halving(
    candidates: Sequence[Any],
    evaluate: Callable[[Any, int], dict[str, Any]],
    *,
    images: Sequence[int],
    eta: int,
    budget: int,
    objective: str,
    max_drop: float,
    seed: int = 0,
    on_promote: Callable[[list[Any]], None] | None = None,
) -> list[list[tuple[Any, dict[str, Any]]]]:
    """Run the bracket; ``evaluate(candidate, rung) -> metrics``. Returns, per rung, ``[(candidate, metrics)]``.
    ``on_promote(alive)`` is told which candidates move up (so built models of the others can be freed)."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    rungs = len(images)
    n0 = first_rung_size(len(candidates), budget, rungs, eta)
    alive = list(candidates)
    if n0 < len(alive):
        alive = random.Random(seed).sample(alive, n0)
    sizes = rung_sizes(n0, rungs, eta)
    _log.info("successive halving: %d candidates, rungs %s (budget %d)", len(candidates), sizes, budget)
    history = []
    for k in range(rungs):
        results = [(c, evaluate(c, k)) for c in alive]
        history.append(results)
        if k + 1 < rungs:
            slack = 200.0 / images[k]
            ranked = sorted(results, key=lambda cm: rank_key(cm[1], objective, max_drop, slack))
            alive = [c for c, _ in ranked[: sizes[k + 1]]]
            if on_promote is not None:
                on_promote(alive)
    return history
