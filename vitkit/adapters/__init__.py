"""Host-model knowledge lives here and only here: :func:`adapter_for` gives the :class:`HostAdapter` every method
uses (see :mod:`.protocol`); :mod:`.timm_vit` / :mod:`.timm_vit_surgery` are the timm ViT implementation."""

from .protocol import (
    ADAPTERS,
    EXPLICIT_ATTENTION,
    AttentionCore,
    HostAdapter,
    KeyRole,
    LinearRole,
    NormLinear,
    Stage,
    adapter_for,
    run_forward,
)
from .timm_vit import BlockParts, ViTInfo, block_parts, describe
from .timm_vit_host import TIMM_VIT, TimmViTAdapter

__all__ = [
    "ADAPTERS",
    "EXPLICIT_ATTENTION",
    "AttentionCore",
    "BlockParts",
    "HostAdapter",
    "KeyRole",
    "LinearRole",
    "NormLinear",
    "Stage",
    "TIMM_VIT",
    "TimmViTAdapter",
    "ViTInfo",
    "adapter_for",
    "block_parts",
    "describe",
    "run_forward",
]
