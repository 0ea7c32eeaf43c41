"""torchvision ``VisionTransformer`` (``vit_b_16``-style) state dict → timm ``VisionTransformer``, exactly.

torchvision's layout maps one to one onto timm's (pre-norm blocks, LayerNorm eps 1e-6, exact GELU, fused q/k/v in
``nn.MultiheadAttention.in_proj_*`` in timm's q, k, v order, cls token first, the head on the cls token). Sizes come
from shapes; the head count does not, so it comes from ``heads=`` or torchvision's named configs.
"""

from __future__ import annotations

import logging
from typing import Any

from ...errors import ConfigError, UnsupportedModelError
from .common import StateDict, check_all_used, check_hints, data_overlay, mlp_ratio_for, square_grid, take

_log = logging.getLogger(__name__)

LAYOUT = "torchvision VisionTransformer"
TIMM_NAME = "vit_base_patch16_224"  # every size is passed explicitly; the name only picks timm's ViT builder
HINTS = ("heads", "image_size")
#: torchvision's named configs: (patch, width, depth, MLP width) → heads
NAMED = {
    (16, 768, 12, 3072): ("vit_b_16", 12),
    (32, 768, 12, 3072): ("vit_b_32", 12),
    (16, 1024, 24, 4096): ("vit_l_16", 16),
    (32, 1024, 24, 4096): ("vit_l_32", 16),
    (14, 1280, 32, 5120): ("vit_h_14", 16),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LAYER = "encoder.layers.encoder_layer_{}."
#: torchvision block key suffix → timm block key suffix (old checkpoints name the MLP linear_1 / linear_2)
_BLOCK_KEYS = {
    "ln_1": "norm1",
    "ln_2": "norm2",
    "self_attention.out_proj": "attn.proj",
    "mlp.0": "mlp.fc1",
    "mlp.3": "mlp.fc2",
}
_OLD_MLP = {"mlp.0": "mlp.linear_1", "mlp.3": "mlp.linear_2"}


def num_layers(state: StateDict) -> int:
    depth = 0
    while any(k.startswith(_LAYER.format(depth)) for k in state):
        depth += 1
    return depth


def to_timm(state: StateDict, **hints: Any) -> tuple[str, dict[str, Any], StateDict]:
    """``(timm_name, timm_kwargs, timm_state)`` for a torchvision ViT state dict; ``hints``: ``heads``,
    ``image_size`` (checked against the position embedding)."""
    hints = check_hints(LAYOUT, hints, HINTS)
    if "heads.pre_logits.weight" in state:
        raise UnsupportedModelError(
            f"{LAYOUT} with representation_size (heads.pre_logits + tanh) is not handled: "
            "fine-tune a model without representation_size, or drop heads.* and convert the backbone"
        )
    used: set[str] = set()
    out: StateDict = {}
    proj = take(state, used, "conv_proj.weight", LAYOUT)  # [D, C, p, p]
    dim, in_chans, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2])
    if proj.shape[2] != proj.shape[3]:
        raise UnsupportedModelError(f"{LAYOUT}: non-square patches {tuple(proj.shape[2:])} are not handled")
    out["patch_embed.proj.weight"] = proj
    out["patch_embed.proj.bias"] = take(state, used, "conv_proj.bias", LAYOUT)
    out["cls_token"] = take(state, used, "class_token", LAYOUT)
    pos = take(state, used, "encoder.pos_embedding", LAYOUT)  # [1, 1 + N, D]
    out["pos_embed"] = pos
    grid = square_grid(int(pos.shape[1]) - 1, LAYOUT)
    img_size = grid * patch
    if hints.get("image_size") not in (None, img_size):
        raise ConfigError(
            f"image_size {hints['image_size']} does not match the checkpoint's {grid}x{grid} grid of {patch}px "
            f"patches ({img_size}px): drop --image-size or pass {img_size}"
        )
    depth = num_layers(state)
    if depth == 0:
        raise ConfigError(f"{LAYOUT} state dict has no encoder.layers.encoder_layer_0.*: nothing to convert")
    hidden = 0
    for i in range(depth):
        src, dst = _LAYER.format(i), f"blocks.{i}."
        out[dst + "attn.qkv.weight"] = take(state, used, src + "self_attention.in_proj_weight", LAYOUT)
        out[dst + "attn.qkv.bias"] = take(state, used, src + "self_attention.in_proj_bias", LAYOUT)
        for s, d in _BLOCK_KEYS.items():
            if s in _OLD_MLP and src + s + ".weight" not in state and src + _OLD_MLP[s] + ".weight" in state:
                s = _OLD_MLP[s]
            for p in ("weight", "bias"):
                out[f"{dst}{d}.{p}"] = take(state, used, f"{src}{s}.{p}", LAYOUT)
        hidden = int(out[dst + "mlp.fc1.weight"].shape[0])
    for p in ("weight", "bias"):
        out[f"norm.{p}"] = take(state, used, f"encoder.ln.{p}", LAYOUT)
        out[f"head.{p}"] = take(state, used, f"heads.head.{p}", LAYOUT)
    check_all_used(state, used, LAYOUT)
    num_classes = int(out["head.weight"].shape[0])
    heads = hints.get("heads")
    if heads is None:
        named = NAMED.get((patch, dim, depth, hidden))
        if named is None:
            raise ConfigError(
                f"{LAYOUT} with width {dim}, depth {depth}, patch {patch} is not one of torchvision's named configs "
                "and the head count is not in the weights: pass --heads N (heads=N)"
            )
        heads = named[1]
        _log.info("torchvision layout matches %s: %d heads", named[0], heads)
    if dim % heads:
        raise ConfigError(f"heads={heads} does not divide the width {dim}: pass the model's num_heads")
    kwargs: dict[str, Any] = {
        "img_size": img_size,
        "patch_size": patch,
        "in_chans": in_chans,
        "embed_dim": dim,
        "depth": depth,
        "num_heads": int(heads),
        "mlp_ratio": mlp_ratio_for(dim, hidden, LAYOUT),
        "qkv_bias": True,
        "num_classes": num_classes,
        "pretrained_cfg_overlay": data_overlay(
            in_chans, img_size, num_classes, IMAGENET_MEAN, IMAGENET_STD, crop_pct=1.0, interpolation="bilinear"
        ),
    }
    return TIMM_NAME, kwargs, out
