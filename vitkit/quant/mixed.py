"""Mixed-precision PTQ: per-layer weight bits under an average-bit (size) budget, then RepQ-ViT calibration.

Scores (one forward/backward over the calibration images, labels = the model's own predictions):

* ``"hessian"`` — second-order Taylor estimate of the loss increase of quantizing layer ℓ to b bits with the
  empirical-Fisher diagonal as Hessian: ``Ω(ℓ, b) = Σ F ⊙ (W − Q_b(W))²``, ``F = E[(∂L/∂W)²]`` (HAWQ-V2/V3-style
  Fisher trace, Dong et al. 2020; used as the sensitivity term of Mix-QViT).
* ``"relevance"`` — LRP-QViT (Ranjan & Savakis, 2024): a layer's share of the relevance of the predicted class,
  ``ρ_ℓ = Σ|a_ℓ ⊙ ∂f_c/∂a_ℓ| / Σ_ℓ' ...`` at each linear output, times the layer's relative weight
  quantization error at b bits. Deliberate difference: relevance is propagated with the LRP-0 rule, which
  equals gradient × input; LRP-QViT's attention-specific propagation rules are not reproduced.

Allocation: start every layer at the smallest candidate and greedily raise the layer with the largest score
drop per added bit until the budget ``avg_bits × Σ params`` is spent (a knapsack relaxation; Mix-QViT solves
an integer program instead).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..configs import TransformConfig
from ..ops import quant as Q
from ..registry import register_transform
from ..validate import check_choice, check_ints, check_number
from .ptq import METHODS, PTQConfig, _restore, apply_ptq, build_plan, calibration_tensor, check_not_quantized

_log = logging.getLogger(__name__)

#: sensitivity scores (module docstring)
SCORES = ("hessian", "relevance")


@dataclass(frozen=True)
class MixedPrecisionConfig(TransformConfig):
    """Per-layer weight bits from ``candidates`` with mean ``avg_bits`` (weighted by parameter count), scored by
    ``score`` (``hessian`` | ``relevance``); activations at ``a_bits``; calibration by ``method`` (see
    :class:`PTQConfig`). ``targets``/``skip`` as in :class:`PTQConfig`."""

    avg_bits: float = 4.0
    candidates: tuple[int, ...] = (4, 6, 8)
    score: str = "hessian"
    a_bits: int = 4
    method: str = "repq"
    calib_images: int = 32
    seed: int = 0

    def validate(self) -> None:
        cands = check_ints(self.candidates, "MixedPrecisionConfig.candidates", low=2, high=8)
        check_number(
            self.avg_bits,
            "MixedPrecisionConfig.avg_bits",
            low=min(cands),
            high=max(cands),
            why=" (the candidates' range)",
        )
        check_choice(self.score, "MixedPrecisionConfig.score", SCORES)
        check_choice(self.method, "MixedPrecisionConfig.method", METHODS)
        self.ptq_config({})  # validates a_bits / calib_images through PTQConfig

    def ptq_config(self, layer_bits: dict[str, int]) -> PTQConfig:
        return PTQConfig(
            w_bits=max(self.candidates),
            a_bits=self.a_bits,
            method=self.method,
            calib_images=self.calib_images,
            layer_bits=layer_bits or None,
            seed=self.seed,
            targets=self.targets,
            skip=self.skip,
        )


def _weight_error(w: torch.Tensor, bits: int) -> torch.Tensor:
    """``(W − Q_b(W))²`` for the per-output-channel RepQ-style weight quantizer."""
    s, z = Q.search_uniform(w, bits, axis=0, method="quantile")
    return (w - Q.fake_quant(w, s, z, bits, symmetric=False, axis=0)).pow(2)


def layer_scores(model: nn.Module, x: torch.Tensor, names: list[str], cands: tuple[int, ...], score: str) -> dict:
    """``{name: {bits: Ω}}`` (larger = more loss from quantizing that layer at those bits)."""
    modules = dict(model.named_modules())
    lins = {n: modules[n] for n in names}
    acts: dict[str, torch.Tensor] = {}
    hooks = []
    if score == "relevance":
        for n, m in lins.items():

            def keep(mod, args, out, n=n):
                out.retain_grad()
                acts[n] = out

            hooks.append(m.register_forward_hook(keep))
    model.zero_grad(set_to_none=True)
    fisher = {n: torch.zeros_like(m.weight) for n, m in lins.items()}
    relevance = dict.fromkeys(lins, 0.0)
    try:
        with torch.enable_grad():
            for xb in x.split(8):  # per-batch squared gradients approximate the Fisher diagonal
                logits = model(xb)
                pred = logits.argmax(-1)
                if score == "hessian":
                    F.cross_entropy(logits, pred).backward()
                    for n, m in lins.items():
                        fisher[n] += m.weight.grad.detach().pow(2)
                        m.weight.grad = None
                else:
                    logits.gather(1, pred[:, None]).sum().backward()
                    for n in lins:
                        a = acts[n]
                        relevance[n] += float((a.detach() * a.grad).abs().sum())
                model.zero_grad(set_to_none=True)
    finally:
        for h in hooks:
            h.remove()
    out: dict[str, dict[int, float]] = {}
    if score == "hessian":
        for n, m in lins.items():
            out[n] = {b: float((fisher[n] * _weight_error(m.weight.detach(), b)).sum()) for b in cands}
    else:
        total = sum(relevance.values()) or 1.0
        for n, m in lins.items():
            share = relevance[n] / total
            w = m.weight.detach()
            norm = float(w.pow(2).sum()) or 1.0
            out[n] = {b: share * float(_weight_error(w, b).sum()) / norm for b in cands}
    return out


def allocate_bits(scores: dict, sizes: dict[str, int], cands: tuple[int, ...], avg_bits: float) -> dict[str, int]:
    """Greedy: all layers at ``min(cands)``; raise the layer with the best score drop per added bit while the
    parameter-weighted mean stays ≤ ``avg_bits``."""
    cands = tuple(sorted(cands))
    bits = {n: cands[0] for n in scores}
    budget = avg_bits * sum(sizes.values())
    used = sum(bits[n] * sizes[n] for n in bits)
    while True:
        best, best_gain = None, 0.0
        for n in scores:
            i = cands.index(bits[n])
            if i + 1 == len(cands):
                continue
            nb = cands[i + 1]
            extra = (nb - bits[n]) * sizes[n]
            if used + extra > budget + 1e-6:
                continue
            gain = (scores[n][bits[n]] - scores[n][nb]) / extra
            if best is None or gain > best_gain:
                best, best_gain = n, gain
        if best is None:
            return bits
        nb = cands[cands.index(bits[best]) + 1]
        used += (nb - bits[best]) * sizes[best]
        bits[best] = nb


def _restore_mixed(model: nn.Module, cfg: MixedPrecisionConfig, decisions: dict) -> None:
    _restore(model, cfg.ptq_config(decisions.get("layer_bits", {})), decisions)


@register_transform(
    MixedPrecisionConfig,
    name="mixed_ptq",
    kind="numerics",
    paper="LRP-QViT (Ranjan & Savakis, 2024) / Fisher-Hessian sensitivity",
    restore=_restore_mixed,
    example={"avg_bits": 6.0, "calib_images": 4},
)
def apply_mixed_ptq(
    model: nn.Module, cfg: MixedPrecisionConfig, *, calib=None, dry_run: bool = False
) -> dict[str, Any]:
    check_not_quantized(model)
    plan = build_plan(model, cfg.ptq_config({}))
    names = [n for n, slots in plan.items() if "w_quant" in slots]
    modules = dict(model.named_modules())
    sizes = {n: modules[n].weight.numel() for n in names}
    if dry_run:
        return {"summary": f"mixed precision ~{cfg.avg_bits} bit over {len(names)} layers (scored at run time)"}
    x = calibration_tensor(calib, model, cfg.calib_images, cfg.seed)
    was_training = model.training
    model.eval()
    scores = layer_scores(model, x, names, tuple(cfg.candidates), cfg.score)
    model.train(was_training)
    layer_bits = allocate_bits(scores, sizes, tuple(cfg.candidates), float(cfg.avg_bits))
    avg = sum(layer_bits[n] * sizes[n] for n in names) / sum(sizes.values())
    decisions = apply_ptq(model, cfg.ptq_config(layer_bits), calib=x)
    decisions.update(
        summary=f"mixed precision {avg:.2f} avg weight bits ({cfg.score}), A{cfg.a_bits} {cfg.method}",
        layer_bits=layer_bits,
        avg_bits=round(avg, 3),
        scores={n: {str(b): v for b, v in s.items()} for n, s in scores.items()},
    )
    return decisions
