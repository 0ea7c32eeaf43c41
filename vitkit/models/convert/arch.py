"""``vitkit_vit``: timm's ``VisionTransformer`` with the two options foreign ViTs need and timm's builder lacks.

Registered with timm (``timm.create_model("vitkit_vit", ...)``), so ``vitkit.models.build_arch`` and artifacts rebuild
it from a YAML-plain arch record. The model is a plain timm ``VisionTransformer`` of timm ``Block`` / ``Attention``
modules, so every vitkit adapter and method sees an ordinary ViT. Extra kwargs, on top of ``VisionTransformer``'s:

* ``attn_head_dim`` (int): per-head width when ``num_heads * head_dim != embed_dim`` (lucidrains ``dim_head``);
  timm's ``Attention`` supports it but ``VisionTransformer`` does not pass it down, so the blocks' attention is
  rebuilt with it after construction.
* ``patch_pixel_norm`` (bool): a ``LayerNorm`` over each patch's raw pixels (flattened ``(p1 p2 c)``, lucidrains'
  order) before the patch projection: :class:`PixelNormPatchEmbed`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.layers import Attention, PatchEmbed
from timm.models import VisionTransformer, build_model_with_cfg, register_model

from ...errors import ConfigError

ARCH_NAME = "vitkit_vit"

#: timm reads the default pretrained config of a registered model from its module's ``default_cfgs``.
default_cfgs = {
    ARCH_NAME: {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "fixed_input_size": True,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "first_conv": "patch_embed.proj",
        "classifier": "head",
    }
}


class PixelNormPatchEmbed(PatchEmbed):
    """``PatchEmbed`` with a ``LayerNorm`` over each patch's raw pixels before ``proj``.

    What changed: ``pre_norm`` normalizes every patch flattened as ``(p1 p2 c)``; the normalized pixels are put back
    in image layout so ``proj`` stays the patchify ``nn.Conv2d`` every method knows (quantizers, pruning)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        ph, pw = self.patch_size
        self.pre_norm = nn.LayerNorm(ph * pw * self.proj.in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        ph, pw = self.patch_size
        if H % ph or W % pw:
            raise ConfigError(f"image {H}x{W} is not a multiple of the patch size {ph}x{pw}: resize or crop it")
        gh, gw = H // ph, W // pw
        p = x.reshape(B, C, gh, ph, gw, pw).permute(0, 2, 4, 3, 5, 1)  # [B, gh, gw, ph, pw, C]
        p = self.pre_norm(p.reshape(B, gh, gw, ph * pw * C))  # [B, gh, gw, ph*pw*C]
        x = p.reshape(B, gh, gw, ph, pw, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, H, W)  # back to [B, C, H, W]
        x = self.proj(x)  # [B, D, gh, gw]
        if self.flatten:
            x = x.flatten(2).transpose(1, 2)  # [B, gh*gw, D]
        return self.norm(x)


def _set_head_dim(model: VisionTransformer, num_heads: int, head_dim: int) -> None:
    """Rebuild every block's ``Attention`` with ``num_heads`` heads of ``head_dim`` (same bias / dropout options)."""
    for blk in model.blocks:
        old = blk.attn
        blk.attn = Attention(
            model.embed_dim,
            num_heads=num_heads,
            attn_head_dim=head_dim,
            qkv_bias=old.qkv.bias is not None,
            proj_bias=old.proj.bias is not None,
            attn_drop=old.attn_drop.p,
            proj_drop=old.proj_drop.p,
        )
        if not isinstance(old.q_norm, nn.Identity) or not isinstance(old.norm, nn.Identity):
            raise ConfigError("vitkit_vit: attn_head_dim cannot be combined with qk_norm / scale_attn_norm")


@register_model
def vitkit_vit(
    pretrained: bool = False, attn_head_dim: int | None = None, patch_pixel_norm: bool = False, **kwargs: Any
) -> VisionTransformer:
    """A timm ``VisionTransformer`` plus ``attn_head_dim`` and ``patch_pixel_norm`` (see the module docstring)."""
    if pretrained:
        raise ConfigError("vitkit_vit has no pretrained weights: load converted weights with vitkit.load(...)")
    if patch_pixel_norm:
        kwargs["embed_layer"] = PixelNormPatchEmbed
    num_heads = int(kwargs.get("num_heads", 12))
    if attn_head_dim is not None:
        if kwargs.get("global_pool") == "map":
            raise ConfigError("vitkit_vit: attn_head_dim cannot be combined with global_pool='map'")
        kwargs["num_heads"] = 1  # timm's blocks assert embed_dim % num_heads == 0; the attention is rebuilt below
    model = build_model_with_cfg(VisionTransformer, ARCH_NAME, pretrained=False, **kwargs)
    if attn_head_dim is not None:
        _set_head_dim(model, num_heads, int(attn_head_dim))
    return model
