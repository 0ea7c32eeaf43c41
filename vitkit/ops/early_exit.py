"""Early-exit math on plain tensors: exit scores, which exit each sample takes, threshold calibration.

LGViT (Xu et al., "LGViT: Dynamic Early Exiting for Accelerating Vision Transformer", ACM MM 2023, §3.4)
exits a sample at the first internal classifier whose prediction is confident enough: max softmax
probability ≥ τ ("confidence") or prediction entropy ≤ τ ("entropy"). vitkit puts both on one scale so
that a single threshold τ ∈ (0, 1) means "exit when the score reaches τ" for either criterion:

* confidence: ``s = max_c softmax(z)_c``;
* entropy: ``s = 1 − H(softmax(z)) / log C`` (a *certainty*: 1 for a one-hot prediction, 0 for uniform),
  i.e. the paper's ``H ≤ τ_H`` with ``τ_H = (1 − τ) log C``.

Larger τ: fewer, later exits. No nn.Module, no timm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

CRITERIA = ("confidence", "entropy")


def exit_scores(logits: torch.Tensor, criterion: str = "confidence") -> torch.Tensor:
    """Exit score in [0, 1] per row of ``logits`` ``[B, C]`` → ``[B]`` (see module docstring)."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [B, C]
    if criterion == "confidence":
        return logp.max(dim=-1).values.exp()
    if criterion == "entropy":
        c = logits.shape[-1]
        if c < 2:
            return torch.ones(logits.shape[0], device=logits.device)
        ent = -(logp.exp() * logp).sum(dim=-1)  # [B] nats
        return (1.0 - ent / math.log(c)).clamp(0.0, 1.0)
    raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")


def exit_score_row(values: list[float], criterion: str = "confidence") -> float:
    """:func:`exit_scores` of one row given as Python floats (the batch-1 fast path: no tensor ops)."""
    m = max(values)
    exps = [math.exp(v - m) for v in values]
    total = sum(exps)
    if criterion == "confidence":
        return 1.0 / total  # exp(max - m) / Σ exp(v - m)
    if len(values) < 2:
        return 1.0
    ent = math.log(total) - sum(e * (v - m) for e, v in zip(exps, values, strict=True)) / total
    return min(1.0, max(0.0, 1.0 - ent / math.log(len(values))))


def first_exit(scores: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Index of the exit each sample takes: the first ``k`` with ``scores[k] ≥ thresholds[k]``.

    ``scores`` ``[E, N]`` (one row per internal exit), ``thresholds`` ``[E]``. Samples that pass no exit
    get index ``E`` (the model's own head). Returns ``[N]`` long.
    """
    E, N = scores.shape
    passed = scores >= thresholds.to(scores.dtype).view(E, 1)  # [E, N]
    passed = torch.cat([passed, passed.new_ones(1, N)], dim=0)  # [E+1, N]: the final head always "passes"
    return passed.to(torch.int8).argmax(dim=0)  # first True along exits


def effective_thresholds(thresholds: list[float], active: list[bool] | None = None) -> torch.Tensor:
    """``[E]`` thresholds with switched-off exits set to 2.0, a score no sample reaches (scores lie in [0, 1])."""
    active = [True] * len(thresholds) if active is None else active
    return torch.tensor([float(t) if a else 2.0 for t, a in zip(thresholds, active, strict=True)])


def simulate(
    scores: torch.Tensor, correct: torch.Tensor, thresholds: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample outcome of early exiting without running the model again.

    ``scores`` ``[E, N]``; ``correct`` ``[E+1, N]`` bool (is exit k's prediction right; row E = final head).
    Returns ``(exit index [N], correct at the chosen exit [N] bool)``.
    """
    idx = first_exit(scores, thresholds)  # [N]
    hit = correct.gather(0, idx.view(1, -1)).squeeze(0)  # [N]
    return idx, hit


def calibrate_threshold(
    scores: torch.Tensor, correct: torch.Tensor, max_drop: float, *, lo: float = 1e-6, hi: float = 1 - 1e-6
) -> tuple[float, dict]:
    """Smallest single threshold τ (most exits) whose accuracy drop vs the final head is ≤ ``max_drop``.

    ``scores`` ``[E, N]``, ``correct`` ``[E+1, N]`` as in :func:`simulate`; ``max_drop`` in accuracy
    points (1.0 = one percentage point). Candidates are the observed scores (where the outcome can change)
    clipped to ``[lo, hi]``; ``hi`` (almost never exit) always qualifies unless scores hit 1.0 exactly.
    Returns ``(τ, {"top1_full", "top1_exit", "drop_pts", "exits"})`` measured on this set.
    """
    E, N = scores.shape
    base = correct[E].float().mean().item()
    cands = torch.unique(scores.flatten().clamp(lo, hi))  # sorted ascending
    cands = torch.cat([cands, cands.new_tensor([hi])]).unique()

    def outcome(t: float) -> tuple[float, torch.Tensor]:
        idx, hit = simulate(scores, correct, torch.full((E,), t))
        return hit.float().mean().item(), idx

    # accuracy is not monotone in τ: scan all candidates (N·E of them, each O(N·E)) in ascending order
    # and take the first that fits; bisect only when the set is large.
    if cands.numel() > 4096:
        cands = torch.quantile(cands.double(), torch.linspace(0, 1, 4096, dtype=torch.float64)).float()
        cands = torch.cat([cands, cands.new_tensor([hi])]).unique()
    for t in cands.tolist():
        acc, idx = outcome(t)
        if 100.0 * (base - acc) <= max_drop + 1e-9:
            break
    hist = torch.bincount(idx, minlength=E + 1).tolist()
    return float(t), {"top1_full": base, "top1_exit": acc, "drop_pts": 100.0 * (base - acc), "exits": hist}


@dataclass(frozen=True)
class ExitCosts:
    """What each part of an early-exit forward costs (MACs, or seconds measured on this machine).

    ``embed``: patch embedding and everything before the first block; ``block_costs``: one entry per block;
    ``exits``: block index after which each exit head sits; ``heads``: cost of evaluating each exit head
    (and its score); ``final``: the model's own norm + head."""

    embed: float
    block_costs: tuple[float, ...]
    exits: tuple[int, ...]
    heads: tuple[float, ...]
    final: float

    def path(self, active: list[bool] | None = None) -> torch.Tensor:
        """``[E+1]``: cost paid by a sample leaving at exit k (blocks run + *active* heads evaluated on the
        way); the last entry is a sample passing every exit. Inactive exits are never evaluated."""
        active = [True] * len(self.exits) if active is None else list(active)
        out, spent, done = [], float(self.embed), 0
        for k, b in enumerate(self.exits):
            spent += sum(self.block_costs[done : b + 1]) + (self.heads[k] if active[k] else 0.0)
            done = b + 1
            out.append(spent)
        out.append(spent + sum(self.block_costs[done:]) + self.final)
        return torch.tensor(out, dtype=torch.float64)

    @property
    def full(self) -> float:
        """The model without exits: embed + every block + final head."""
        return float(self.embed + sum(self.block_costs) + self.final)


def calibrate_per_exit(
    scores: torch.Tensor,
    correct: torch.Tensor,
    max_drop: float,
    costs: ExitCosts,
    *,
    grid: int = 64,
    rounds: int = 6,
    lo: float = 1e-6,
    hi: float = 1 - 1e-6,
) -> tuple[list[float], list[bool], dict]:
    """Cost-aware thresholds: one τ per exit, and exits switched off, minimising the mean cost per sample.

    vitkit's extension of LGViT's single threshold (the paper calibrates one τ): the objective is the mean
    of ``costs.path(active)[exit of each sample]`` — measured latency makes fixed costs (patch embedding,
    head evaluation) count, which MACs under-weight — subject to a top-1 drop ≤ ``max_drop`` points vs the
    final head on this set. Coordinate descent from the best single τ (:func:`calibrate_threshold`): for
    each exit in turn try ``grid`` quantiles of its scores and "off" (head not evaluated, never exits) and
    keep the cheapest feasible; repeat until a round changes nothing. Never worse than the single τ on
    this set. Returns ``(thresholds [E], active [E], info)``; an inactive exit keeps τ = ``hi``.
    """
    E, N = scores.shape
    base = correct[E].float().mean().item()
    t0, _ = calibrate_threshold(scores, correct, max_drop, lo=lo, hi=hi)
    thr = [t0] * E
    active = [True] * E

    def evaluate(t: list[float], act: list[bool]) -> tuple[float, float, torch.Tensor]:
        idx, hit = simulate(scores, correct, effective_thresholds(t, act))
        return costs.path(act)[idx].mean().item(), 100.0 * (base - hit.float().mean().item()), idx

    best, drop, idx = evaluate(thr, active)
    for _ in range(rounds):
        changed = False
        for k in range(E):
            q = torch.quantile(scores[k].double(), torch.linspace(0, 1, grid, dtype=torch.float64))
            options = [(float(c), True) for c in q.clamp(lo, hi).unique().tolist()] + [(hi, False)]
            for t_k, a_k in options:
                t, act = list(thr), list(active)
                t[k], act[k] = t_k, a_k
                cost, d, ix = evaluate(t, act)
                if d <= max_drop + 1e-9 and cost < best - 1e-12:
                    thr, active, best, drop, idx, changed = t, act, cost, d, ix, True
        if not changed:
            break
    hist = torch.bincount(idx, minlength=E + 1).tolist()
    info = {
        "top1_full": base,
        "top1_exit": base - drop / 100.0,
        "drop_pts": drop,
        "exits": hist,
        "cost_ratio": costs.full / best if best > 0 else float("inf"),
    }
    return thr, active, info
