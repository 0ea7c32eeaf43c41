"""RepQ-ViT scale reparameterization (Li et al., ICCV 2023, §4.2, eq. 6–9).

A post-LayerNorm activation quantized per channel with scales ``s`` and zero points ``z`` is made per-tensor
by folding ``r = s / s̃`` and ``b = s̃·(z̃ − z)`` into the LayerNorm affine and the next linear layer:

    γ ← γ / r,   β ← β / r − b,   W[:, c] ← W[:, c]·r_c,   bias ← bias + W′·b

with ``s̃ = mean(s)``, ``z̃ = round(mean(z))`` (RepQ-ViT eq. 7; ``b`` written as the paper's
``(−z·s)/r − (−z̃·s̃)``). In float the network is unchanged (``W′(y/r − b) = W y − W′ b``); the per-channel
quantization of ``y`` with ``(s, z)`` becomes exactly a per-tensor quantization of ``y′`` with ``(s̃, z̃)``.
DopQ-ViT (Yang et al., 2024, MOSF) uses the median instead of the mean (``reduce="median"``). Rounding
``z̃`` is a deliberate difference from RepQ-ViT's code (integer kernels need an integer zero point).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UnsupportedModelError


def reparam_factors(
    scale: torch.Tensor, zero: torch.Tensor, *, reduce: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(r [C], b [C], s̃ [1], z̃ [1])`` for per-channel ``scale``/``zero`` ``[C]``."""
    if reduce == "mean":
        s_t, z_t = scale.mean(), zero.mean()
    elif reduce == "median":
        s_t, z_t = scale.median(), zero.median()
    else:
        raise ValueError(f"reduce must be mean or median, got {reduce!r}")
    z_t = torch.round(z_t)
    r = scale / s_t
    b = (-zero * scale) / r - (-z_t * s_t)  # = s̃·(z̃ − z)
    return r, b, s_t.reshape(1), z_t.reshape(1)


@torch.no_grad()
def fold_into_norm_linear(norm: nn.Module, linear: nn.Linear, r: torch.Tensor, b: torch.Tensor) -> bool:
    """Apply ``γ ← γ/r, β ← β/r − b`` to ``norm`` and ``W[:, c] ← W[:, c]·r_c, bias ← bias + W′ b`` to ``linear``.

    Returns True when ``linear`` had no bias and one was added (its state dict gains ``bias``).
    """
    return fold_into_norm_linears(norm, [linear], r, b)[0]


@torch.no_grad()
def fold_into_norm_linears(norm: nn.Module, linears, r: torch.Tensor, b: torch.Tensor) -> list[bool]:
    """:func:`fold_into_norm_linear` for a norm feeding several Linears (a SwiGLU's gate and value): the norm is
    folded once, every linear it feeds is compensated. Returns, per linear, whether a bias was added."""
    if not isinstance(norm, nn.LayerNorm) or norm.weight is None or norm.bias is None:
        raise UnsupportedModelError(
            f"RepQ-ViT reparameterization needs a LayerNorm with affine weight and bias, got {type(norm).__name__}"
        )
    norm.weight.div_(r)
    norm.bias.div_(r).sub_(b)
    return [fold_into_linear(linear, r, b) for linear in linears]


@torch.no_grad()
def fold_into_linear(linear: nn.Linear, r: torch.Tensor, b: torch.Tensor) -> bool:
    """``W[:, c] ← W[:, c]·r_c, bias ← bias + W′ b``: the linear side of the fold (True when a bias was added)."""
    linear.weight.mul_(r.unsqueeze(0))  # [out, in] · [1, in]
    added = linear.bias is None
    if added:
        linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=linear.weight.dtype))
    linear.bias.add_(linear.weight @ b)
    return added
