"""Exact shape surgery on ``nn.Linear`` layers, shared by every adapter's pruning: keep some rows (output units)
and/or columns (input units) of a Linear as a new plain ``nn.Linear`` with the same device, dtype and
``requires_grad``; and the check that kept indices are valid."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UnsupportedModelError


def slice_linear(lin: nn.Linear, *, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    w = lin.weight.detach()
    if rows is not None:
        w = w.index_select(0, rows)
    if cols is not None:
        w = w.index_select(1, cols)
    bias = lin.bias is not None
    new = nn.Linear(w.shape[1], w.shape[0], bias=bias, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if bias:
            b = lin.bias.detach()
            new.bias.copy_(b.index_select(0, rows) if rows is not None else b)
    new.weight.requires_grad_(lin.weight.requires_grad)
    if bias:
        new.bias.requires_grad_(lin.bias.requires_grad)
    return new


def _check_kept(keep: list[int], n: int, where: str, what: str, if_empty: str) -> None:
    """``keep`` (sorted) must be non-empty distinct indices below ``n``."""
    if not keep:
        raise UnsupportedModelError(f"{where}: {if_empty}")
    if keep[0] < 0 or keep[-1] >= n or len(set(keep)) != len(keep):
        raise UnsupportedModelError(f"{where}: kept {what} {keep} are not distinct indices below {n}")
