"""Outlier input channels kept in float for per-tensor int8 runtimes (LLM.int8()-style decomposition).

A real ViT can carry one or two *massive* activation channels into a linear layer (on the AugReg ViT-Ti, one
post-GELU ``fc2`` input channel of block 7 reaches |x| = 213 while the median channel peaks at 2.6). A runtime
that quantizes activations per tensor (ONNX Runtime / torch.ao dynamic int8) then spends its 256 levels on that
one channel, and every other channel rounds to a handful of codes. The mixed-precision decomposition of
LLM.int8() (Dettmers et al., NeurIPS 2022, §3.2, eq. 3) computes those few input channels in float and the
rest in int8:

    y = W[:, Ō]·x[Ō] (int8)  +  W[:, O]·x[O] (float)  + b

:class:`OutlierSplitLinear` holds the two parts as sub-modules ``main`` (full width, outlier columns zeroed,
input masked) and ``outlier`` (``k`` columns, no bias); the int8 exporters quantize ``main`` and leave every
module or ONNX node under an ``outlier`` name in float. Exact in float (tested).
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from ..adapters import adapter_for
from ..ops.quant import channel_absmax, outlier_channels

_log = logging.getLogger(__name__)

#: name of the float part; exporters exclude modules / ONNX nodes under it from int8
OUTLIER_PART = "outlier"


class OutlierSplitLinear(nn.Module):
    """``main(x ⊙ keep) + outlier(x[..., idx])``: a Linear whose ``idx`` input channels are computed apart."""

    def __init__(self, linear: nn.Linear, idx: torch.Tensor) -> None:
        super().__init__()
        idx = idx.to(torch.long).flatten()
        keep = torch.ones(linear.in_features, dtype=linear.weight.dtype)
        keep[idx] = 0.0
        self.main = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
        self.outlier = nn.Linear(idx.numel(), linear.out_features, bias=False)
        with torch.no_grad():
            self.main.weight.copy_(linear.weight * keep)  # outlier columns zeroed: they live in `outlier`
            if linear.bias is not None:
                self.main.bias.copy_(linear.bias)
            self.outlier.weight.copy_(linear.weight[:, idx])
        self.register_buffer("keep", keep)
        self.register_buffer("idx", idx)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x * self.keep) + self.outlier(x.index_select(-1, self.idx))


@torch.no_grad()
def split_outlier_inputs_(
    model: nn.Module, calib: torch.Tensor, *, ratio: float = 8.0, within: str | None = None
) -> dict[str, list[int]]:
    """Replace every ``nn.Linear`` under ``within`` (a module-name prefix; None = inside the host's transformer
    blocks) whose input has channels with calibrated ``|x|`` max above ``ratio`` × the median channel's by an
    :class:`OutlierSplitLinear`; one float forward over ``calib``. Returns ``{linear name: [outlier channel
    indices]}`` (empty when the model has no such channels)."""
    absmax: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(mod: nn.Module, args: tuple) -> None:
            m = channel_absmax(args[0])  # [C]
            absmax[name] = torch.maximum(absmax[name], m) if name in absmax else m

        return record

    prefixes = (within,) if within is not None else tuple(f"{n}." for n, _ in adapter_for(model).blocks(model))
    linears = {n: m for n, m in model.named_modules() if n.startswith(prefixes) and type(m) is nn.Linear}
    hooks = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
    try:
        model.eval()
        model(calib)
    finally:
        for h in hooks:
            h.remove()
    found: dict[str, list[int]] = {}
    for name, lin in linears.items():
        if name in absmax:
            idx = outlier_channels(absmax[name], ratio)
            if 0 < idx.numel() < lin.in_features:
                found[name] = idx.tolist()
    split_channels_(model, found)
    if found:
        _log.info("outlier input channels kept in float (ratio %.1f): %s", ratio, found)
    return found


def split_channels_(model: nn.Module, channels: dict[str, list[int]]) -> None:
    """Replace each named ``nn.Linear`` by an :class:`OutlierSplitLinear` over the given input channels."""
    for name, idx in channels.items():
        lin = model.get_submodule(name)
        if type(lin) is not nn.Linear:
            raise TypeError(f"{name} is a {type(lin).__name__}, not an nn.Linear: cannot split its input channels")
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, OutlierSplitLinear(lin, torch.tensor(idx)))


def split_channels(model: nn.Module) -> dict[str, list[int]]:
    """``{linear name: [channels kept in float]}`` of the :class:`OutlierSplitLinear` layers in ``model``."""
    return {n: m.idx.tolist() for n, m in model.named_modules() if isinstance(m, OutlierSplitLinear)}
