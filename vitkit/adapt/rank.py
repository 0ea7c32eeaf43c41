"""How much rank did full fine-tuning use? The update spectrum of a fine-tuned model against its base.

LoRA (Hu et al., ICLR 2022, §7.2–7.3) rests on the observation that the fine-tuning update ``ΔW = W − W0`` of
a large pretrained model has a low "intrinsic rank". Whether that holds for *your* model and task decides
how large a LoRA rank must be, so vitkit measures it: for every LoRA target linear (default: attention
qkv/proj and MLP fc1/fc2 of every block) :func:`update_spectrum` reports ``‖ΔW‖_F / ‖W0‖_F`` and the
fraction of ``‖ΔW‖_F²`` in the top-r singular directions (Eckart–Young), and :func:`truncate_to_rank`
builds the fine-tuned model with each of those updates cut to its best rank-r approximation (everything
else kept fine-tuned) — what a rank-r LoRA that found full fine-tuning's solution would reach.

Neither function modifies its inputs.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..ops.lora import truncate_update, update_energy
from .common import adapter_kinds
from .lora import target_linears


def _paired_weights(base: nn.Module, tuned: nn.Module, targets: Sequence[str] | None) -> dict[str, tuple]:
    for which, model in (("base", base), ("fine-tuned", tuned)):
        if kinds := adapter_kinds(model):
            raise ConfigError(
                f"the {which} model still holds {', '.join(kinds)} adapters: fold LoRA first (vitkit.merge_back) "
                "or compare plain models"
            )
    names = target_linears(tuned, targets, (), what="linear layers")
    pairs = {}
    for name in names:
        try:
            w0 = base.get_submodule(name).weight
        except AttributeError:
            msg = f"base model has no layer {name!r}: pass the model the fine-tuning started from"
            raise ConfigError(msg) from None
        w1 = tuned.get_submodule(name).weight
        if w0.shape != w1.shape:
            raise ConfigError(
                f"{name}: base weight {tuple(w0.shape)} vs fine-tuned {tuple(w1.shape)}; the models are not the same "
                "architecture"
            )
        pairs[name] = (w0.detach(), w1.detach())
    return pairs


def update_spectrum(
    base: nn.Module, tuned: nn.Module, ranks: Sequence[int] = (1, 2, 4, 8, 16), *, targets: Sequence[str] | None = None
) -> dict:
    """Per target linear: ``{"relative_norm": ‖ΔW‖/‖W0‖, "energy": {r: fraction of ‖ΔW‖² in rank r}}``,
    plus ``"mean"`` over the layers (same keys)."""
    layers = {}
    for name, (w0, w1) in _paired_weights(base, tuned, targets).items():
        delta = (w1 - w0).to(torch.float32)  # [out, in]
        rel = float(delta.norm() / w0.to(torch.float32).norm().clamp_min(1e-12))
        layers[name] = {"relative_norm": rel, "energy": dict(zip(ranks, update_energy(delta, ranks), strict=True))}
    n = len(layers)
    mean = {
        "relative_norm": sum(v["relative_norm"] for v in layers.values()) / n,
        "energy": {r: sum(v["energy"][r] for v in layers.values()) / n for r in ranks},
    }
    return {"layers": layers, "mean": mean}


def truncate_to_rank(
    base: nn.Module, tuned: nn.Module, rank: int, *, targets: Sequence[str] | None = None
) -> nn.Module:
    """A copy of ``tuned`` whose target linears hold ``W0 + best-rank-r(ΔW)`` (all other parameters as tuned)."""
    out = copy.deepcopy(tuned)
    with torch.no_grad():
        for name, (w0, w1) in _paired_weights(base, tuned, targets).items():
            delta = truncate_update((w1 - w0).to(torch.float32), rank)
            out.get_submodule(name).weight.copy_((w0.to(torch.float32) + delta).to(w1.dtype))
    return out
