"""lucidrains ``vit_pytorch.ViT`` state dict → timm ``VisionTransformer`` (the ``vitkit_vit`` arch), exactly.

Layout (current ``vit_pytorch/vit.py``): ``to_patch_embedding`` = Rearrange ``(p1 p2 c)`` → LayerNorm(patch_dim) →
Linear → LayerNorm(dim); ``cls_token`` ``[1, 1, D]`` (``[1, 0, D]`` with ``pool="mean"``); ``pos_embedding``;
``transformer.layers.N.0`` = Attention (``norm``, ``to_qkv`` without bias, ``to_out.0`` — absent when
``heads == 1 and dim_head == dim``); ``transformer.layers.N.1.net`` = LayerNorm, Linear, act, Dropout, Linear;
``transformer.norm``; ``mlp_head``. Every LayerNorm has eps 1e-5.

How each feature lands in timm:

* ``dim_head * heads != dim``: ``attn_head_dim`` (``vitkit_vit``); ``to_qkv`` has no bias: ``qkv_bias=False``;
* no ``to_out`` (``project_out`` false): an identity ``proj`` (weight I, bias 0), exact and a plain timm block;
* the patch LayerNorm over raw pixels: ``patch_pixel_norm=True``; the ``(p1 p2 c)`` Linear becomes the patchify
  conv; the LayerNorm after it: ``embed_norm_layer="layernorm"``;
* ``pool="mean"``: ``global_pool="avg"`` with the final norm before pooling (``fc_norm=False``); with a cls token
  (older vit-pytorch) the mean includes it: ``pool_include_prefix=True``; without one (current): ``class_token=False``;
* activations are not in the weights: ``act`` hint (``gelu`` default, ``relu``, ...) → timm ``act_layer``.

The head count is not in the weights either: ``heads`` / ``dim_head`` hints; neither given, vit-pytorch's default
``dim_head=64`` is assumed when it divides the attention width.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ...errors import CheckpointError, ConfigError, UnsupportedModelError
from .arch import ARCH_NAME
from .common import StateDict, check_all_used, check_hints, data_overlay, mlp_ratio_for, square_grid, take

_log = logging.getLogger(__name__)

LAYOUT = "lucidrains ViT"
HINTS = ("heads", "dim_head", "image_size", "patch_size", "channels", "act", "pool")
ACTS = ("gelu", "relu", "silu", "tanh", "sigmoid", "leaky_relu", "gelu_tanh", "quick_gelu")
DEFAULT_DIM_HEAD = 64  # vit_pytorch.ViT's default
LN_EPS = 1e-5  # torch's nn.LayerNorm default, used throughout vit-pytorch
_EMBED = "to_patch_embedding."
_LAYER = "transformer.layers.{}."


def num_layers(state: StateDict) -> int:
    depth = 0
    while any(k.startswith(_LAYER.format(depth)) for k in state):
        depth += 1
    return depth


def _patch_embedding(state: StateDict, used: set[str], out: StateDict, hints: dict, num_patches: int) -> dict:
    """Map ``to_patch_embedding.{i}``: an optional LayerNorm, the Linear, an optional LayerNorm; returns sizes."""
    idx = sorted({int(k[len(_EMBED) :].split(".")[0]) for k in state if k.startswith(_EMBED)})
    linear = [i for i in idx if state[f"{_EMBED}{i}.weight"].dim() == 2]
    if len(linear) != 1:
        raise CheckpointError(f"{LAYOUT}: to_patch_embedding should hold exactly one Linear, found {len(linear)}")
    li = linear[0]
    w = take(state, used, f"{_EMBED}{li}.weight", LAYOUT)  # [D, p1*p2*c]
    dim, patch_dim = int(w.shape[0]), int(w.shape[1])
    grid = square_grid(num_patches, LAYOUT)
    patch, chans = _patch_and_channels(patch_dim, grid, hints)
    # (p1 p2 c) flattening → conv weight [D, C, p1, p2]
    out["patch_embed.proj.weight"] = w.reshape(dim, patch, patch, chans).permute(0, 3, 1, 2).contiguous()
    out["patch_embed.proj.bias"] = take(state, used, f"{_EMBED}{li}.bias", LAYOUT)
    pre = [i for i in idx if i < li]
    post = [i for i in idx if i > li]
    if len(pre) > 1 or len(post) > 1:
        raise UnsupportedModelError(f"{LAYOUT}: to_patch_embedding indices {idx} are not LayerNorm, Linear, LayerNorm")
    for names, dst in ((pre, "patch_embed.pre_norm"), (post, "patch_embed.norm")):
        for i in names:
            for p in ("weight", "bias"):
                out[f"{dst}.{p}"] = take(state, used, f"{_EMBED}{i}.{p}", LAYOUT)
    return {"dim": dim, "patch": patch, "chans": chans, "img": grid * patch, "pre": bool(pre), "post": bool(post)}


def _patch_and_channels(patch_dim: int, grid: int, hints: dict) -> tuple[int, int]:
    """Patch side and channels from ``patch_dim = p * p * c`` and the hints (``channels`` 3, then 1, by default)."""
    patch, chans, img = hints.get("patch_size"), hints.get("channels"), hints.get("image_size")
    if img is not None:
        if img % grid:
            raise ConfigError(f"image_size {img} is not a multiple of the {grid}x{grid} patch grid: check --image-size")
        patch = patch or img // grid
        if patch * grid != img:
            raise ConfigError(f"image_size {img} and patch_size {patch} disagree with the {grid}x{grid} grid")
    candidates = [(patch, chans)] if patch and chans else []
    if not candidates:
        for c in [chans] if chans else [3, 1]:
            if patch:
                candidates.append((patch, c))
            else:
                side = round((patch_dim / c) ** 0.5)
                candidates.append((side, c))
    for p, c in candidates:
        if p * p * c == patch_dim:
            return p, c
    raise ConfigError(
        f"{LAYOUT}: patch projection input {patch_dim} is not patch_size^2 * channels for the hints given: "
        "pass --patch-size and --channels (or --image-size)"
    )


def to_timm(state: StateDict, **hints: Any) -> tuple[str, dict[str, Any], StateDict]:
    """``(timm_name, timm_kwargs, timm_state)`` for a lucidrains ViT; ``hints``: ``heads``, ``dim_head``,
    ``image_size``, ``patch_size``, ``channels``, ``act`` (default ``gelu``), ``pool`` (``cls``/``mean``)."""
    hints = check_hints(LAYOUT, hints, HINTS)
    _refuse_old_layout(state)
    act = str(hints.get("act", "gelu")).lower()
    if act not in ACTS:
        raise ConfigError(f"act={act!r} is not handled: use one of {list(ACTS)}")
    used: set[str] = set()
    out: StateDict = {}
    cls = take(state, used, "cls_token", LAYOUT)  # [1, 1, D], or [1, 0, D] with pool="mean"
    pos = take(state, used, "pos_embedding", LAYOUT)  # [1, n_cls + N, D]
    n_cls = int(cls.shape[1])
    if n_cls > 1:
        raise UnsupportedModelError(f"{LAYOUT}: {n_cls} class tokens are not handled")
    pool = hints.get("pool") or ("cls" if n_cls else "mean")
    if pool not in ("cls", "mean"):
        raise ConfigError(f"pool={pool!r} is not handled: use 'cls' or 'mean'")
    if pool == "cls" and not n_cls:
        raise ConfigError(f"{LAYOUT}: pool='cls' but cls_token holds no token: use pool='mean'")
    emb = _patch_embedding(state, used, out, hints, int(pos.shape[1]) - n_cls)
    dim = emb["dim"]
    if n_cls:
        out["cls_token"] = cls
    out["pos_embed"] = pos
    depth = num_layers(state)
    if depth == 0:
        raise CheckpointError(f"{LAYOUT} state dict has no transformer.layers.0.*: nothing to convert")
    qkv0 = state.get(_LAYER.format(0) + "0.to_qkv.weight")
    inner = int(qkv0.shape[0]) // 3 if qkv0 is not None else 0
    project_out = _LAYER.format(0) + "0.to_out.0.weight" in state
    heads, dim_head = _heads(inner, dim, project_out, hints)
    hidden = 0
    for i in range(depth):
        src, dst = _LAYER.format(i), f"blocks.{i}."
        qkv = take(state, used, src + "0.to_qkv.weight", LAYOUT)
        if qkv.shape[0] != 3 * inner:
            raise UnsupportedModelError(f"{LAYOUT}: layer {i} has attention width {qkv.shape[0] // 3} != {inner}")
        out[dst + "attn.qkv.weight"] = qkv
        if (src + "0.to_out.0.weight" in state) != project_out:
            raise UnsupportedModelError(f"{LAYOUT}: layers differ in having an output projection (to_out)")
        if project_out:
            for p in ("weight", "bias"):
                out[f"{dst}attn.proj.{p}"] = take(state, used, f"{src}0.to_out.0.{p}", LAYOUT)
        else:  # heads == 1 and dim_head == dim: vit-pytorch skips the projection; an identity Linear is exact
            out[dst + "attn.proj.weight"] = torch.eye(dim, dtype=qkv.dtype)
            out[dst + "attn.proj.bias"] = torch.zeros(dim, dtype=qkv.dtype)
        for s, d in (("0.norm", "norm1"), ("1.net.0", "norm2"), ("1.net.1", "mlp.fc1"), ("1.net.4", "mlp.fc2")):
            for p in ("weight", "bias"):
                out[f"{dst}{d}.{p}"] = take(state, used, f"{src}{s}.{p}", LAYOUT)
        hidden = int(out[dst + "mlp.fc1.weight"].shape[0])
    for p in ("weight", "bias"):
        out[f"norm.{p}"] = take(state, used, f"transformer.norm.{p}", LAYOUT)
        out[f"head.{p}"] = take(state, used, f"mlp_head.{p}", LAYOUT)
    check_all_used(state, used, LAYOUT, "a vit_pytorch variant other than vit_pytorch.ViT is not handled")
    num_classes = int(out["head.weight"].shape[0])
    kwargs: dict[str, Any] = {
        "img_size": emb["img"],
        "patch_size": emb["patch"],
        "in_chans": emb["chans"],
        "embed_dim": dim,
        "depth": depth,
        "num_heads": heads,
        "mlp_ratio": mlp_ratio_for(dim, hidden, LAYOUT),
        "qkv_bias": False,
        "act_layer": act,
        "num_classes": num_classes,
        "class_token": bool(n_cls),
        "global_pool": "token" if pool == "cls" else "avg",
        "fc_norm": False,
    }
    if pool == "mean" and n_cls:
        kwargs["pool_include_prefix"] = True
    if heads * dim_head != dim:
        kwargs["attn_head_dim"] = dim_head
    if emb["pre"]:
        kwargs["patch_pixel_norm"] = True
    if emb["post"]:
        kwargs["embed_norm_layer"] = "layernorm"
    kwargs["vitkit_norm_eps"] = LN_EPS
    kwargs["pretrained_cfg_overlay"] = data_overlay(
        emb["chans"], emb["img"], num_classes, (0.5,), (0.5,), crop_pct=1.0, interpolation="bilinear"
    )
    return ARCH_NAME, kwargs, out


def _refuse_old_layout(state: StateDict) -> None:
    """Older vit-pytorch releases wrapped blocks in ``PreNorm`` (``.fn.``) and put a LayerNorm in ``mlp_head``."""
    old = [k for k in state if k.startswith("transformer.layers.") and ".fn." in k] or [
        k for k in state if k.startswith("mlp_head.0.")
    ]
    if old:
        raise UnsupportedModelError(
            f"{LAYOUT}: an older vit-pytorch layout ({old[0]}: PreNorm blocks / LayerNorm in mlp_head) is not handled: "
            "load it with the vit-pytorch release that wrote it, copy the weights into a current vit_pytorch.ViT "
            "and re-save its state_dict"
        )


def _heads(inner: int, dim: int, project_out: bool, hints: dict) -> tuple[int, int]:
    """``(heads, dim_head)`` with ``heads * dim_head == inner`` from the hints, else vit-pytorch's defaults."""
    if inner == 0:
        raise CheckpointError(f"{LAYOUT} state dict lacks transformer.layers.0.0.to_qkv.weight")
    heads, dim_head = hints.get("heads"), hints.get("dim_head")
    if not project_out:
        if (heads or 1) != 1 or (dim_head or inner) != inner or inner != dim:
            raise ConfigError(
                f"{LAYOUT} without to_out means heads == 1 and dim_head == dim ({dim}): the hints say otherwise"
            )
        return 1, inner
    if heads is None and dim_head is None:
        if inner % DEFAULT_DIM_HEAD:
            raise ConfigError(
                f"{LAYOUT}: attention width {inner} is not a multiple of vit-pytorch's default dim_head 64 and the "
                "head count is not in the weights: pass --heads N or --dim-head N"
            )
        dim_head = DEFAULT_DIM_HEAD
        _log.warning("lucidrains ViT: assuming dim_head=64 (vit-pytorch's default): %d heads", inner // 64)
    heads = heads or inner // dim_head
    dim_head = dim_head or inner // heads
    if heads * dim_head != inner:
        raise ConfigError(
            f"heads={heads} x dim_head={dim_head} != the checkpoint's attention width {inner}: check --heads/--dim-head"
        )
    return int(heads), int(dim_head)
