"""Converters from foreign ViT state dicts to exact timm models: torchvision ``VisionTransformer`` and lucidrains
``vit_pytorch.ViT``.

``to_timm(state, **hints) -> (timm_name, timm_kwargs, timm_state)`` per layout; the result is built with
:func:`vitkit.models.load.build_arch` and loaded strictly. Every kwarg is YAML-plain, so the arch record goes into
artifacts and recipes. Features timm's ViT builder lacks (a head width other than width / heads, a LayerNorm over
raw patch pixels) come from the ``vitkit_vit`` timm architecture registered by :mod:`.arch` on import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn

from ...errors import ConfigError
from . import arch as _arch  # noqa: F401  (registers the vitkit_vit timm architecture)
from . import lucidrains_vit, torchvision_vit
from .common import StateDict
from .detect import detect

CONVERTERS: dict[str, Callable[..., tuple[str, dict[str, Any], StateDict]]] = {
    "torchvision": torchvision_vit.to_timm,
    "lucidrains": lucidrains_vit.to_timm,
}
SOURCES = ("auto", *CONVERTERS)


def convert_state(state: StateDict, source: str = "auto", **hints: Any) -> tuple[str, dict[str, Any], StateDict]:
    """``(timm_name, timm_kwargs, timm_state)`` for a foreign state dict; ``source`` ``auto`` detects the layout.
    ``state`` is not modified."""
    if source not in SOURCES:
        raise ConfigError(f"unknown source layout {source!r}: use one of {list(SOURCES)}")
    layout = detect(state) if source == "auto" else source
    return CONVERTERS[layout](state, **hints)


def load_converted(state: StateDict, source: str = "auto", **hints: Any) -> nn.Module:
    """The converted timm model (eval mode, ``vitkit_arch`` recorded) with the converted weights loaded strictly."""
    from ..load import build_arch, load_state_dict_strict

    name, kwargs, timm_state = convert_state(state, source, **hints)
    model = build_arch(name, kwargs)
    load_state_dict_strict(model, timm_state, source=f"converted {source} state dict")
    return model


__all__ = ["CONVERTERS", "SOURCES", "convert_state", "detect", "load_converted"]
