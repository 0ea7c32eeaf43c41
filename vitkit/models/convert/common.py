"""Helpers shared by the state-dict converters: hint checking, key accounting, the data-config overlay."""

from __future__ import annotations

import math
from typing import Any

import torch

from ...errors import CheckpointError, ConfigError

StateDict = dict[str, torch.Tensor]


def check_hints(layout: str, hints: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    """Drop ``None`` hints; refuse ones this layout does not use (e.g. ``dim_head`` for torchvision)."""
    given = {k: v for k, v in hints.items() if v is not None}
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(f"{layout} conversion does not take {unknown}: valid hints are {list(allowed)}")
    for k in ("heads", "dim_head", "image_size", "patch_size", "channels"):
        v = given.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise ConfigError(f"{k} must be a positive integer, got {v!r}")
    return given


def take(state: StateDict, used: set[str], key: str, layout: str) -> torch.Tensor:
    """``state[key]`` (a detached copy), recording that ``key`` was consumed."""
    if key not in state:
        raise CheckpointError(f"{layout} state dict lacks {key}: is the checkpoint complete and of this layout?")
    used.add(key)
    return state[key].detach().clone()


def check_all_used(state: StateDict, used: set[str], layout: str, hint: str = "") -> None:
    """Refuse keys the converter did not map (an unknown variant would otherwise be converted inexactly)."""
    left = [k for k in state if k not in used]
    if left:
        more = f" ... ({len(left)} keys)" if len(left) > 4 else ""
        raise CheckpointError(
            f"{layout} state dict has keys the converter does not handle: {left[:4]}{more}"
            f"{'; ' + hint if hint else ''}; remove them if they are not part of the model"
        )


def square_grid(num_patches: int, layout: str) -> int:
    """The side of a square patch grid of ``num_patches`` tokens."""
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise CheckpointError(
            f"{layout}: {num_patches} position embeddings is not a square patch grid; only square images are handled"
        )
    return side


def mlp_ratio_for(dim: int, hidden: int, layout: str) -> float:
    """timm's ``mlp_ratio`` giving exactly ``hidden`` (timm uses ``int(dim * mlp_ratio)``)."""
    ratio = hidden / dim
    if int(dim * ratio) != hidden:
        raise CheckpointError(f"{layout}: MLP width {hidden} for width {dim} is not reproducible by timm's mlp_ratio")
    return ratio


def data_overlay(in_chans: int, img_size: int, num_classes: int, mean: tuple, std: tuple, **extra: Any) -> dict:
    """``pretrained_cfg_overlay`` (YAML-plain lists) telling vitkit's data pipeline the input the model expects."""
    return {
        "input_size": [in_chans, img_size, img_size],
        "mean": [float(m) for m in (mean * in_chans)[:in_chans]] if len(mean) != in_chans else list(mean),
        "std": [float(s) for s in (std * in_chans)[:in_chans]] if len(std) != in_chans else list(std),
        "num_classes": num_classes,
        **extra,
    }
