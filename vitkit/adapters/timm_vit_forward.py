"""The timm ``VisionTransformer`` forward split into ``embed → blocks → pool → head`` (written once here)."""

from __future__ import annotations

import torch
import torch.nn as nn


def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) → tokens (B, N, D) entering the first block."""
    raise NotImplementedError


def pool(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Tokens after the last block → pooled features (B, D)."""
    raise NotImplementedError


def head(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Pooled features → logits."""
    raise NotImplementedError
