"""State-dict key roles of a timm ``VisionTransformer``: which block and part each key belongs to."""

from __future__ import annotations

import torch

from .protocol import KeyRole


def key_roles(state_dict: dict[str, torch.Tensor]) -> dict[str, KeyRole]:
    raise NotImplementedError
