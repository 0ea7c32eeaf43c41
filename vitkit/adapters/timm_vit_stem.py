"""The patch embedding of a timm ``VisionTransformer``: a patchify conv (``PatchEmbed``) or a conv stem
(``HybridEmbed``: a CNN backbone, then an optional 1×1/patch conv ``proj`` — ViTamin's MbConv stem with ``proj``
Identity, Chen et al., "ViTamin: Designing Scalable Vision Models in the Vision-Language Era", CVPR 2024).

What methods see of a conv stem, as of the conv + attention hybrids (:mod:`.timm_hybrid`):

* the stem's **first** conv is the patch projection (``outer_layers().patch_proj_name``: PTQ quantizes its input
  at ``first_input_bits``);
* every other ``nn.Conv2d`` of the stem (and a conv ``proj``) has the linear role ``conv`` — PTQ gives each a
  per-output-channel weight quantizer and a per-tensor input quantizer; the stem's norms (BatchNorm, LayerNorm2d)
  stay float;
* the input size comes from ``img_size`` and the first conv's ``in_channels`` (``proj`` may be Identity).
"""

from __future__ import annotations

import torch.nn as nn
from timm.layers import HybridEmbed

from ..errors import UnsupportedModelError


def has_conv_stem(model: nn.Module) -> bool:
    return isinstance(getattr(model, "patch_embed", None), HybridEmbed)


def stem_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every ``nn.Conv2d`` of the patch embedding, in registration (= forward) order, names relative to the model."""
    pe = model.patch_embed
    return [(f"patch_embed.{n}", m) for n, m in pe.named_modules() if isinstance(m, nn.Conv2d)]


def check_stem(model: nn.Module) -> None:
    """Refuse a patch embedding this adapter cannot describe (no conv, an un-flattened output)."""
    pe = model.patch_embed
    if not has_conv_stem(model):
        return
    if not stem_convs(model):
        raise UnsupportedModelError("patch_embed.backbone has no nn.Conv2d: a conv stem needs a first convolution")
    if not pe.flatten:
        raise UnsupportedModelError("patch_embed is a HybridEmbed with flatten=False: only token output is handled")


def patch_proj_name(model: nn.Module) -> str:
    """The patch projection: ``patch_embed.proj``, or a conv stem's first convolution."""
    if has_conv_stem(model):
        check_stem(model)
        return stem_convs(model)[0][0]
    return "patch_embed.proj"


def conv_names(model: nn.Module) -> list[str]:
    """The stem convs other than the patch projection (role ``conv``); empty for a patchify ``PatchEmbed``."""
    if not has_conv_stem(model):
        return []
    first = patch_proj_name(model)
    return [name for name, _ in stem_convs(model) if name != first]


def in_chans(model: nn.Module) -> int:
    """Input channels: the patch projection's (a conv stem: its first conv's; ``proj`` may be Identity)."""
    return int(model.get_submodule(patch_proj_name(model)).in_channels)


def patch_stride(model: nn.Module) -> tuple[int, int]:
    """Pixels per token side: ``patch_size``, times the backbone's reduction for a conv stem."""
    pe = model.patch_embed
    if has_conv_stem(model):
        return tuple(int(r) * int(p) for r, p in zip(pe.feature_ratio, pe.patch_size, strict=True))
    return tuple(int(p) for p in pe.patch_size)
