"""RepQ-ViT (Li et al., ICCV 2023): scale reparameterization of post-LayerNorm activations and the log√2
post-softmax quantizer — vitkit's default PTQ method (``PTQConfig(method="repq")``).

As published (§4, Algorithm 1 and public code):

1. every Linear/Conv2d (patch embedding and head included) gets a per-output-channel weight quantizer and an
   input quantizer; both inputs of ``q·kᵀ`` and ``attn·v`` are quantized, the post-softmax map with the log√2
   quantizer (eq. 11–12: ``Q(A) = clamp(⌊−log√2 A / Δ⌉)``, dequantized as ``2^(−⌈q/2⌉)·(√2 if q odd)``,
   computable with bit shifts); the patch-embedding input stays 8 bit;
2. the post-LayerNorm inputs (the Linears each LayerNorm feeds, :meth:`HostAdapter.norm_linear_pairs`) are
   calibrated **per channel**; scales come from RepQ's quantile search (clip quantiles {0.999, 0.9999,
   0.99999}, lowest L2 error); one forward over the calibration images with quantization on calibrates every
   quantizer in order;
3. scale reparameterization (eq. 6–9, :mod:`vitkit.quant.reparam`) folds the per-channel scales into the
   LayerNorm affine and the next linear — ``γ ← γ/r``, ``β ← β/r − b``, ``W[:, c] ← W[:, c]·r_c``, ``bias ←
   bias + W′b`` with ``r = s / s̃``, ``s̃ = mean(s)`` — the input quantizer becomes per-tensor ``(s̃, z̃)`` and
   the weight quantizers of those linears are marked uncalibrated;
4. a second calibration pass over the same images re-fits them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ...adapters import adapter_for
from ..quantizer import make_quantizer
from ..reparam import fold_into_norm_linears, reparam_factors
from .base import Calibration, Calibrator, register_calibrator


def post_ln_pairs(model: nn.Module, plan: dict) -> list[tuple[str, str]]:
    """``(norm name, linear name)`` of the per-channel post-LN input quantizers in ``plan``, in forward order."""
    pairs = []
    for pair in adapter_for(model).norm_linear_pairs(model):
        for lin in pair.linears:
            spec = plan.get(lin, {}).get("a_quant")
            if spec and spec.get("kind") == "uniform" and spec.get("channels"):
                pairs.append((pair.norm, lin))
    return pairs


@torch.no_grad()
def repq_reparameterize(model: nn.Module, plan: dict, *, reduce: str = "mean") -> tuple[list[str], list[str]]:
    """Step 3 on a calibrated model: fold each per-channel post-LN quantizer into LN + linear, replace it by the
    per-tensor quantizer ``(s̃, z̃)`` and un-calibrate that linear's weight quantizer. Updates ``plan`` in
    place; returns (reparameterized linears, linears that gained a bias)."""
    modules = dict(model.named_modules())
    done, added = [], []
    feeds = {pair.norm: pair.linears for pair in adapter_for(model).norm_linear_pairs(model)}
    folded: dict[str, tuple] = {}  # norm → its factors: a norm feeding several linears (SwiGLU) is folded once
    for norm_name, lin_name in post_ln_pairs(model, plan):
        lin = modules[lin_name]
        if norm_name not in folded:  # the first quantized linear's statistics (the others see the same input)
            aq = lin.a_quant
            folded[norm_name] = reparam_factors(aq.scale, aq.zero_point, reduce=reduce)
            r, b = folded[norm_name][:2]
            fed = feeds[norm_name]  # every linear this norm feeds is compensated, quantized or not
            gained = fold_into_norm_linears(modules[norm_name], [modules[n] for n in fed], r, b)
            added += [name for name, g in zip(fed, gained, strict=True) if g]
        r, b, s_t, z_t = folded[norm_name]
        spec = dict(plan[lin_name]["a_quant"], channels=None)
        new = make_quantizer(spec, where=f"{lin_name}.a_quant")
        new.scale.copy_(s_t)
        new.zero_point.copy_(z_t)
        new.calibrated = True
        lin.a_quant = new
        plan[lin_name]["a_quant"] = spec
        lin.w_quant.calibrated = False  # re-fitted by the second calibration pass (step 4)
        done.append(lin_name)
    return done, added


@dataclass(frozen=True)
class RepQCalibrator(Calibrator):
    """RepQ-ViT: per-channel post-LN inputs, reparameterized after the first pass; ``reduce``: how the per-channel
    scales become one (``mean``, RepQ-ViT eq. 7; ``median``, DopQ-ViT)."""

    reduce: str = "mean"

    def plan(self, model: nn.Module, sites: dict[str, str], cfg) -> dict[str, dict[str, dict]]:
        plan = super().plan(model, sites, cfg)
        modules = dict(model.named_modules())
        for pair in adapter_for(model).norm_linear_pairs(model):
            for lin in pair.linears:
                spec = plan.get(lin, {}).get("a_quant")
                if spec and spec["kind"] == "uniform":  # post-LN: per channel first (step 2)
                    spec.update(channels=modules[lin].in_features, axis=-1)
        return plan

    def calibrate(self, model: nn.Module, x: torch.Tensor, plan: dict[str, dict[str, dict]]) -> Calibration:
        with torch.no_grad():
            model(x)  # pass 1 (sequential: upstream quantizers already active)
            done, added = repq_reparameterize(model, plan, reduce=self.reduce)
            model(x)  # pass 2: re-fit the reparameterized linears' weight quantizers
        return Calibration(done, added)


REPQ = register_calibrator(
    RepQCalibrator(
        name="repq",
        paper="RepQ-ViT (Li et al., ICCV 2023)",
        softmax="log_sqrt2",
        act_search="quantile",
        weight_search="quantile",
    )
)
