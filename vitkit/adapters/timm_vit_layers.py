"""Linear roles and (norm → linear) pairs of a timm ``VisionTransformer``: the names quantization and
reparameterization act on."""

from __future__ import annotations

import torch.nn as nn

from .protocol import LinearRole, NormLinear


def norm_linear_pairs(model: nn.Module) -> list[NormLinear]:
    raise NotImplementedError


def linear_roles(model: nn.Module) -> dict[str, LinearRole]:
    raise NotImplementedError
