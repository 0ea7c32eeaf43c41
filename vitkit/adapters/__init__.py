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
from .timm_efficientformer import TIMM_EFFICIENTFORMER  # noqa: F401  (registers the EfficientFormer adapter)
from .timm_eva import TIMM_EVA, TimmEvaAdapter  # noqa: F401  (registers the EVA adapter)
from .timm_swin_host import TIMM_SWIN  # noqa: F401  (registers the Swin adapter)
from .timm_tiny_vit import TIMM_TINY_VIT  # noqa: F401  (registers the TinyViT adapter)
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
