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


def compute_ratio(exit_index: torch.Tensor, exit_cost: torch.Tensor) -> float:
    """Mean compute of the full model over mean compute with exiting; ``exit_cost`` ``[E+1]`` = cost paid
    by a sample leaving at exit k (blocks run + heads evaluated), the last entry the full model's cost."""
    spent = exit_cost.to(torch.float64)[exit_index].mean()
    return float(exit_cost[-1] / spent)


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
