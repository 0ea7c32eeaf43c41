"""The one ONNX tracer every vitkit export goes through: :func:`trace_onnx`.

TorchScript exporter (``dynamo=False``: the dynamo exporter mis-handles the ``__class__``-swapped patched
modules), one input ``x`` and one output ``logits``, a dynamic batch axis. An operator ONNX cannot express is
named in an :class:`~vitkit.errors.UnsupportedModelError` instead of torch's multi-page trace.
"""

from __future__ import annotations

import copy
import inspect
import io
import re
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import UnsupportedModelError
from ..patching import mixin_class

#: the opset every graph is written at unless the caller asks for another one
OPSET = 17

_UNSUPPORTED_OP = re.compile(r"operator '?([\w:.]+)'? to ONNX opset", re.IGNORECASE)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), at most 300 characters."""
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


def onnx_graph_module(model: nn.Module) -> nn.Module:
    """The module to trace for ``model`` as it computes: a transform-provided static graph
    (``model.vitkit_onnx_module()``, e.g. early exit's per-sample exit selection) or the model itself — seen through
    :func:`images_only` when its ``forward`` takes flags besides the images."""
    hook = getattr(model, "vitkit_onnx_module", None)
    return hook() if callable(hook) else images_only(model)


class ImagesOnly(nn.Module):
    """Mixin placed before a host's class: ``forward(x)`` is the host's ``forward(x)`` with its defaults."""

    def forward(self, x: torch.Tensor):
        return super().forward(x)


def images_only(model: nn.Module) -> nn.Module:
    """``model``, or — when its ``forward`` has flag parameters (``is_causal: bool = False``) — a shallow copy (same
    parameters, same names) whose ``forward`` takes the images only. The tracer feeds every defaulted argument in as a
    tensor, and a host that hands the flag on to ``scaled_dot_product_attention`` then fails."""
    flags = [p for p in inspect.signature(model.forward).parameters.values() if isinstance(p.default, bool)]
    if not flags:
        return model
    twin = copy.copy(model)  # shares the parameter and module dicts: nothing is duplicated
    twin.__class__ = mixin_class(ImagesOnly, type(model), f"ImagesOnly{type(model).__name__}", module=__name__)
    return twin


def trace_onnx(
    module: nn.Module, example: torch.Tensor, dst: str | Path | io.BytesIO, *, opset: int = OPSET
) -> str | Path | io.BytesIO:
    """Trace ``module`` on ``example`` into ``dst`` (a path or a buffer) and return ``dst``. Tracer warnings
    (data-dependent branches of the patches, traced once) are silenced; any export failure is an
    ``UnsupportedModelError`` naming the operator when torch names one."""
    target = dst if isinstance(dst, io.BytesIO) else str(dst)
    module = images_only(module)  # every graph (float, int8, QDQ) traces the images-only forward
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                (example,),
                target,
                dynamo=False,
                opset_version=opset,
                input_names=["x"],
                output_names=["logits"],
                dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
            )
        except Exception as exc:  # torch raises several types (UnsupportedOperatorError, RuntimeError, ...)
            hit = _UNSUPPORTED_OP.search(str(exc))
            if hit:
                raise UnsupportedModelError(
                    f"cannot export to ONNX: operator {hit.group(1)} has no opset-{opset} equivalent; "
                    "remove the step that introduces it or export with a higher --opset"
                ) from None
            raise UnsupportedModelError(
                f"ONNX export failed: {first_line(exc)} (`vitkit --debug` shows the trace)"
            ) from exc
    return dst
