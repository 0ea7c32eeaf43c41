"""Aggregating several LoRA updates of one base model into one (LoRA-FAIR, beside plain factor averaging).

A LoRA update is a dict ``{"<module>.lora_A": [r, in], "<module>.lora_B": [out, r]}`` — what
:func:`lora_state_dict` returns for a model with LoRA (and :func:`~vitkit.interop.import_peft` reads from
peft files). See :mod:`vitkit.ops.lora` for the math and why averaging A and B separately is biased.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..ops.lora import aggregate_lora_factors, mean_delta, relative_error
from .lora import LoRALinear, lora_modules


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"<module>.lora_A": A, "<module>.lora_B": B}`` (detached copies) of every LoRA layer in ``model``."""
    out = {}
    for name, mod in lora_modules(model).items():
        out[f"{name}.lora_A"] = mod.lora_A.detach().clone()
        out[f"{name}.lora_B"] = mod.lora_B.detach().clone()
    if not out:
        raise ConfigError("model has no LoRA layers: add them with LoRAConfig first")
    return out


def load_lora_state_dict(model: nn.Module, update: dict[str, torch.Tensor]) -> None:
    """Copy an update's factors into the model's LoRA layers (shapes must match; every layer covered)."""
    mods = lora_modules(model)
    names = _modules_of(update)
    if set(names) != set(mods):
        missing, extra = sorted(set(mods) - set(names)), sorted(set(names) - set(mods))
        raise ConfigError(f"LoRA update does not fit the model: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for name, mod in mods.items():
            _copy(mod, update[f"{name}.lora_A"], update[f"{name}.lora_B"], name)


def _copy(mod: LoRALinear, a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    if a.shape != mod.lora_A.shape or b.shape != mod.lora_B.shape:
        raise ConfigError(
            f"{name}: update factors {tuple(a.shape)}/{tuple(b.shape)} do not match the layer's "
            f"{tuple(mod.lora_A.shape)}/{tuple(mod.lora_B.shape)} (different rank?)"
        )
    mod.lora_A.copy_(a)
    mod.lora_B.copy_(b)


def _modules_of(update: dict[str, torch.Tensor]) -> list[str]:
    names = sorted({k.rsplit(".", 1)[0] for k in update})
    for n in names:
        if f"{n}.lora_A" not in update or f"{n}.lora_B" not in update:
            raise ConfigError(f"LoRA update for {n} needs both {n}.lora_A and {n}.lora_B")
    return names


def aggregate_lora(
    updates: Sequence[dict[str, torch.Tensor]],
    weights: Sequence[float] | None = None,
    *,
    method: str = "fair",
    lam: float = 1e-5,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """One LoRA update from several (clients or tasks) of the same base model and targets.

    ``method="mean"`` averages A and B separately (FedAvg); ``"fair"`` adds LoRA-FAIR's residual
    correction to the averaged B. ``weights``: per-update weights (e.g. client data sizes), default
    uniform. Returns ``(update, {module: relative error of B·A against the average of B_k·A_k})``.
    """
    if not updates:
        raise ConfigError("aggregate_lora needs at least one LoRA update")
    if method not in ("mean", "fair"):
        raise ConfigError(f"aggregate_lora method must be 'mean' or 'fair', got {method!r}")
    names = _modules_of(updates[0])
    for i, u in enumerate(updates[1:], start=1):
        if _modules_of(u) != names:
            raise ConfigError(f"LoRA update {i} targets other modules than update 0: they cannot be aggregated")
    out, errors = {}, {}
    for n in names:
        a_list = [u[f"{n}.lora_A"] for u in updates]
        b_list = [u[f"{n}.lora_B"] for u in updates]
        try:
            a, b = aggregate_lora_factors(a_list, b_list, weights, method=method, lam=lam)
        except ValueError as exc:
            raise ConfigError(f"{n}: {exc}") from None
        dtype = a_list[0].dtype
        out[f"{n}.lora_A"], out[f"{n}.lora_B"] = a.to(dtype), b.to(dtype)
        errors[n] = relative_error(b @ a, mean_delta(a_list, b_list, weights))
    return out, errors
