"""The converters between Hugging Face ``transformers`` checkpoints and timm models, by ``model_type``.

A converter is exact: the timm model it builds computes the ``transformers`` forward (logits or pooled features)
within float rounding, and ``to_hf(to_timm(x)) == x`` key for key. It works on plain dicts (``config.json`` as a
dict, state dicts of tensors): no ``transformers`` import is needed to *load* a folder, only to test against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class HFConverter:
    """One family of ``model_type`` values.

    ``to_timm(config, state) -> (timm_name, timm_kwargs, timm_state)``: the timm architecture (built with
    ``vitkit.models.build_arch(timm_name, timm_kwargs)``, random init, then the state loaded strictly).
    ``to_hf(timm_name, timm_kwargs, timm_state, config) -> (config, state)``: back to a ``transformers`` folder's
    ``config.json`` dict and state dict; ``config`` is the source folder's config when the model came from one
    (keep every field it had), else None (write a complete config). Raises ``UnsupportedModelError`` naming what
    ``transformers`` cannot hold (e.g. per-layer widths)."""

    model_types: tuple[str, ...]
    to_timm: Callable[[dict[str, Any], StateDict], tuple[str, dict[str, Any], StateDict]]
    to_hf: Callable[[str, dict[str, Any], StateDict, dict[str, Any] | None], tuple[dict[str, Any], StateDict]]
    #: does this converter take this timm architecture back to HF? (``timm_name``, ``timm_kwargs``)
    accepts_timm: Callable[[str, dict[str, Any]], bool]


CONVERTERS: dict[str, HFConverter] = {}


def register_hf(conv: HFConverter) -> HFConverter:
    for t in conv.model_types:
        CONVERTERS[t] = conv
    return conv


def supported_model_types() -> list[str]:
    _load_builtin()
    return sorted(CONVERTERS)


def converter_for(model_type: str) -> HFConverter | None:
    _load_builtin()
    return CONVERTERS.get(model_type)


def converter_for_timm(timm_name: str, timm_kwargs: dict[str, Any]) -> HFConverter | None:
    _load_builtin()
    for conv in dict.fromkeys(CONVERTERS.values()):
        if conv.accepts_timm(timm_name, timm_kwargs):
            return conv
    return None


def meta_timm(timm_name: str, timm_kwargs: dict[str, Any], cls: type) -> Any:
    """The timm model on the meta device (no memory, no init cost) when it is exactly a ``cls``, else None: what
    ``to_hf`` / ``accepts_timm`` read the structure from. vitkit options and the data config (lists where timm wants
    tuples) do not change the architecture and are left out."""
    import timm

    kwargs = {k: v for k, v in timm_kwargs.items() if not k.startswith(("vitkit_", "pretrained_cfg"))}
    try:
        with torch.device("meta"):
            model = timm.create_model(timm_name, **kwargs)
    except Exception:  # not a timm name, or kwargs it rejects: not ours
        return None
    return model if type(model) is cls else None


def _load_builtin() -> None:
    """Import the built-in converter modules (each registers itself); by name, so the converters' own import of
    this module is not an import cycle for the ``acyclic_siblings`` contract."""
    import importlib

    for module in ("convert_clip", "convert_swin", "convert_vit"):
        importlib.import_module(f"{__package__}.{module}")
