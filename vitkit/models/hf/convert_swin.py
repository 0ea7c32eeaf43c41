"""Hugging Face Swin (``model_type="swin"``) ⇄ timm ``swin_*`` (``SwinTransformer``), exact in both directions.

``SwinModel`` maps to a headless timm Swin (``num_classes=0``: its output is ``pooler_output``, the final norm then
the average over tokens); ``SwinForImageClassification`` maps to a timm Swin whose ``head.fc`` is the classifier.
Keys are read in the on-disk layout ``save_pretrained`` writes (``attention.self.query``, ...); the in-memory
layout of recent ``transformers`` (``attention.q_proj``, ...) is accepted too and stored ``relative_position_index``
buffers are dropped (both sides rebuild them from the window size).

Only configs that both libraries compute identically are converted; the rest raise ``UnsupportedModelError`` naming
the field: every LayerNorm at eps 1e-5 (HF hard-codes it for the stem and merge norms, timm for all), GELU, no
absolute position embeddings, and per-stage token grids that are multiples of ``window_size`` (HF pads before the
cyclic shift, timm after) or square and equal to it (both then drop the shift).
"""

from __future__ import annotations

import copy
import math
import re
from typing import Any

import torch

from ...errors import CheckpointError, UnsupportedModelError
from .registry import HFConverter, StateDict, meta_timm, register_hf

#: the timm architecture every converted Swin is built from; the kwargs give every size explicitly
TIMM_NAME = "swin_tiny_patch4_window7_224"
_EPS = 1e-5

#: in-memory names of transformers >= 5 → the on-disk names this module works with
_NEW_TO_DISK = (
    (".attention.relative_position_bias.relative_position_bias_table", ".attention.self.relative_position_bias_table"),
    (".attention.q_proj.", ".attention.self.query."),
    (".attention.k_proj.", ".attention.self.key."),
    (".attention.v_proj.", ".attention.self.value."),
    (".attention.o_proj.", ".attention.output.dense."),
    (".mlp.fc1.", ".intermediate.dense."),
    (".mlp.fc2.", ".output.dense."),
)
_DROPPED = re.compile(r"relative_position_index$")


def _pair(v: Any, field: str) -> tuple[int, int]:
    if isinstance(v, int | float):
        return int(v), int(v)
    if isinstance(v, list | tuple) and len(v) == 2:
        return int(v[0]), int(v[1])
    raise UnsupportedModelError(f"Swin config {field}={v!r} is not an int or [h, w]: fix {field} in config.json")


def _stage_grids(image_size: tuple[int, int], patch_size: tuple[int, int], n_stages: int) -> list[tuple[int, int]]:
    """Token grid of each stage (patch merging pads odd sizes, so each later stage is ceil(half))."""
    h, w = image_size[0] // patch_size[0], image_size[1] // patch_size[1]
    grids = []
    for i in range(n_stages):
        if i > 0:
            h, w = (h + 1) // 2, (w + 1) // 2
        grids.append((h, w))
    return grids


def check_config(config: dict[str, Any]) -> None:
    """Raise ``UnsupportedModelError`` (naming the field) unless timm computes this HF Swin config identically."""
    if config.get("hidden_act", "gelu") != "gelu":
        raise UnsupportedModelError(
            f"Swin hidden_act={config['hidden_act']!r} is not supported (timm Swin uses exact GELU): "
            "only hidden_act='gelu' converts"
        )
    if config.get("use_absolute_embeddings", False):
        raise UnsupportedModelError(
            "Swin use_absolute_embeddings=True has no timm SwinTransformer equivalent: "
            "only checkpoints without absolute position embeddings convert"
        )
    eps = float(config.get("layer_norm_eps", _EPS))
    if not math.isclose(eps, _EPS, rel_tol=0, abs_tol=1e-12):
        raise UnsupportedModelError(
            f"Swin layer_norm_eps={eps} differs from the stem/merge norms' fixed 1e-5, which timm cannot mix: "
            "only layer_norm_eps=1e-5 converts"
        )
    image = _pair(config.get("image_size", 224), "image_size")
    patch = _pair(config.get("patch_size", 4), "patch_size")
    if image[0] % patch[0] or image[1] % patch[1]:
        raise UnsupportedModelError(
            f"Swin image_size={list(image)} is not a multiple of patch_size={list(patch)} (HF pads the image, timm "
            "does not): use an image_size divisible by patch_size"
        )
    ws = config.get("window_size", 7)
    if not isinstance(ws, int):
        raise UnsupportedModelError(f"Swin window_size={ws!r} must be one int: per-stage windows do not convert")
    depths = list(config.get("depths", (2, 2, 6, 2)))
    for i, (h, w) in enumerate(_stage_grids(image, patch, len(depths))):
        if min(h, w) > ws:
            if h % ws or w % ws:
                raise UnsupportedModelError(
                    f"Swin stage {i} token grid {h}x{w} is not a multiple of window_size={ws} (HF pads before the "
                    "cyclic shift, timm after): choose image_size so every stage grid divides by window_size"
                )
        elif not h == w == ws:
            raise UnsupportedModelError(
                f"Swin stage {i} token grid {h}x{w} is smaller than window_size={ws} or not square (HF and timm "
                "shrink the window differently): choose image_size so every stage grid is >= window_size"
            )


def _rules(config: dict[str, Any], prefix: str, classifier: bool) -> list[tuple[str, list[str]]]:
    """``(timm_key, [hf_keys])``: the timm tensor is the concatenation of the HF tensors (dim 0)."""
    rules: list[tuple[str, list[str]]] = []
    emb = f"{prefix}embeddings."
    for t in ("weight", "bias"):
        rules.append((f"patch_embed.proj.{t}", [f"{emb}patch_embeddings.projection.{t}"]))
        rules.append((f"patch_embed.norm.{t}", [f"{emb}norm.{t}"]))
    qkv_bias = bool(config.get("qkv_bias", True))
    depths = list(config.get("depths", (2, 2, 6, 2)))
    for i, depth in enumerate(depths):
        hs = f"{prefix}encoder.layers.{i}."
        for j in range(depth):
            hb, tb = f"{hs}blocks.{j}.", f"layers.{i}.blocks.{j}."
            rules.append(
                (f"{tb}attn.relative_position_bias_table", [f"{hb}attention.self.relative_position_bias_table"])
            )
            for t in ("weight", "bias") if qkv_bias else ("weight",):
                rules.append((f"{tb}attn.qkv.{t}", [f"{hb}attention.self.{n}.{t}" for n in ("query", "key", "value")]))
            for t in ("weight", "bias"):
                rules.append((f"{tb}norm1.{t}", [f"{hb}layernorm_before.{t}"]))
                rules.append((f"{tb}attn.proj.{t}", [f"{hb}attention.output.dense.{t}"]))
                rules.append((f"{tb}norm2.{t}", [f"{hb}layernorm_after.{t}"]))
                rules.append((f"{tb}mlp.fc1.{t}", [f"{hb}intermediate.dense.{t}"]))
                rules.append((f"{tb}mlp.fc2.{t}", [f"{hb}output.dense.{t}"]))
        # HF merges at the end of stage i, timm at the start of stage i + 1. Both order the 2x2 neighbours
        # (0,0), (1,0), (0,1), (1,1) in the 4*C merge input (HF concatenates x[r::2, c::2] column-major, timm
        # flattens its (w, h, C) axes), so the reduction and norm weights copy unpermuted (checked by the tests).
        if i + 1 < len(depths):
            rules.append((f"layers.{i + 1}.downsample.reduction.weight", [f"{hs}downsample.reduction.weight"]))
            for t in ("weight", "bias"):
                rules.append((f"layers.{i + 1}.downsample.norm.{t}", [f"{hs}downsample.norm.{t}"]))
    for t in ("weight", "bias"):
        rules.append((f"norm.{t}", [f"{prefix}layernorm.{t}"]))
        if classifier:
            rules.append((f"head.fc.{t}", [f"classifier.{t}"]))
    return rules


def _normalise_keys(state: StateDict) -> StateDict:
    out = {}
    for k, v in state.items():
        if _DROPPED.search(k):
            continue
        for new, disk in _NEW_TO_DISK:
            k = k.replace(new, disk)
        out[k] = v
    return out


def swin_to_timm(config: dict[str, Any], state: StateDict) -> tuple[str, dict[str, Any], StateDict]:
    """HF Swin config + state dict → ``(timm_name, timm_kwargs, timm_state)``."""
    check_config(config)
    state = _normalise_keys(state)
    prefix = "swin." if any(k.startswith("swin.") for k in state) else ""
    classifier = "classifier.weight" in state
    rules = _rules(config, prefix, classifier)
    used = {k for _, hf_keys in rules for k in hf_keys}
    missing = sorted(used - set(state))
    extra = sorted(set(state) - used)
    if missing or extra:
        raise CheckpointError(
            f"Swin checkpoint does not match its config.json: missing {missing[:3]}, unknown {extra[:3]}: "
            "check depths/qkv_bias in config.json, or the model class (only SwinModel and "
            "SwinForImageClassification convert)"
        )
    timm_state: StateDict = {}
    for tk, hf_keys in rules:
        t = torch.cat([state[k] for k in hf_keys], 0) if len(hf_keys) > 1 else state[hf_keys[0]]
        timm_state[tk] = t.clone()
    depths = [int(d) for d in config.get("depths", (2, 2, 6, 2))]
    image = list(_pair(config.get("image_size", 224), "image_size"))
    patch = _pair(config.get("patch_size", 4), "patch_size")
    kwargs: dict[str, Any] = {
        "img_size": image,
        "patch_size": patch[0] if patch[0] == patch[1] else list(patch),
        "in_chans": int(config.get("num_channels", 3)),
        "num_classes": int(state["classifier.weight"].shape[0]) if classifier else 0,
        "embed_dim": int(config.get("embed_dim", 96)),
        "depths": depths,
        "num_heads": [int(h) for h in config.get("num_heads", (3, 6, 12, 24))],
        "window_size": int(config.get("window_size", 7)),
        "mlp_ratio": float(config.get("mlp_ratio", 4.0)),
        "qkv_bias": bool(config.get("qkv_bias", True)),
        "drop_path_rate": float(config.get("drop_path_rate", 0.1)),
    }
    return TIMM_NAME, kwargs, timm_state


def _meta_swin(timm_name: str, timm_kwargs: dict[str, Any]):
    """The timm model on the meta device, or None if it is not a timm SwinTransformer."""
    from timm.models.swin_transformer import SwinTransformer

    return meta_timm(timm_name, timm_kwargs, SwinTransformer)


def accepts_timm(timm_name: str, timm_kwargs: dict[str, Any]) -> bool:
    """A timm ``swin_*`` (v1) name; ``to_hf`` may still refuse features HF Swin cannot hold."""
    return timm_name.startswith("swin_") and _meta_swin(timm_name, timm_kwargs) is not None


def _hf_config_of(model, timm_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The architecture fields of the HF Swin config that computes ``model``; refuses what HF cannot hold."""

    def refuse(what: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"timm Swin {what} cannot be held by a Hugging Face SwinConfig: not exportable")

    pe = model.patch_embed
    if not isinstance(pe.norm, torch.nn.LayerNorm):
        raise refuse("without a patch-embedding norm")
    if model.global_pool != "avg":
        raise refuse(f"global_pool={model.global_pool!r} (HF pools by average)")
    if getattr(model, "dynamic_img_size", False):
        raise refuse("dynamic_img_size=True")
    embed_dim = int(model.embed_dim)
    depths, heads, windows, ratios = [], [], set(), set()
    qkv_bias = set()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    eps = float(timm_kwargs.get("vitkit_norm_eps", norms[0].eps))
    if any(not math.isclose(n.eps, norms[0].eps) for n in norms) or not math.isclose(eps, _EPS, abs_tol=1e-12):
        raise refuse(f"LayerNorm eps {eps} (HF fixes 1e-5 for the stem and merge norms)")
    for i, stage in enumerate(model.layers):
        dim = embed_dim * 2**i
        blk = stage.blocks[0]
        if blk.norm1.normalized_shape[0] != dim:
            raise refuse(f"stage {i} width {blk.norm1.normalized_shape[0]} (HF doubles embed_dim each stage)")
        if blk.attn.qkv.out_features != 3 * dim:
            raise refuse("head_dim set explicitly (HF uses dim // num_heads)")
        if getattr(blk, "always_partition", False):
            raise refuse("always_partition=True")
        depths.append(len(stage.blocks))
        heads.append(int(blk.attn.num_heads))
        ratios.add(blk.mlp.fc1.out_features / dim)
        qkv_bias.add(blk.attn.qkv.bias is not None)
    ref = getattr(model, "_ref_window_sizes", None)
    if ref is None:
        ref = [timm_kwargs.get("window_size", 7)] * len(depths)
    for w in ref:
        windows.update(w if isinstance(w, list | tuple) else (w, w))
    if len(windows) != 1 or len(ratios) != 1:
        raise refuse(f"per-stage window sizes {sorted(windows)} or mlp ratios {sorted(ratios)}")
    img, patch = list(pe.img_size), list(pe.patch_size)
    return {
        "model_type": "swin",
        "image_size": img[0] if img[0] == img[1] else img,
        "patch_size": patch[0] if patch[0] == patch[1] else patch,
        "num_channels": int(pe.proj.in_channels),
        "embed_dim": embed_dim,
        "depths": depths,
        "num_heads": heads,
        "window_size": int(windows.pop()),
        "mlp_ratio": float(ratios.pop()),
        "qkv_bias": qkv_bias.pop() if len(qkv_bias) == 1 else True,
        "hidden_act": "gelu",
        "layer_norm_eps": _EPS,
        "use_absolute_embeddings": False,
    }


def swin_to_hf(
    timm_name: str, timm_kwargs: dict[str, Any], timm_state: StateDict, config: dict[str, Any] | None
) -> tuple[dict[str, Any], StateDict]:
    """timm Swin → ``(config.json dict, state dict)`` of ``SwinForImageClassification`` (with a head) or
    ``SwinModel`` (without); fields of the source ``config`` are kept, the architecture ones rewritten."""
    model = _meta_swin(timm_name, timm_kwargs)
    if model is None:
        raise UnsupportedModelError(f"{timm_name!r} is not a timm SwinTransformer: export it with its own converter")
    arch = _hf_config_of(model, timm_kwargs)
    num_classes = int(model.num_classes)
    out = copy.deepcopy(config) if config else {}
    if out.get("depths") is not None and len(out["depths"]) != len(arch["depths"]):
        for k in ("out_features", "out_indices", "stage_names"):
            out.pop(k, None)
    out.update(arch)
    out["drop_path_rate"] = float(timm_kwargs.get("drop_path_rate", out.get("drop_path_rate", 0.1)))
    out["num_layers"] = len(arch["depths"])
    out["hidden_size"] = int(arch["embed_dim"] * 2 ** (len(arch["depths"]) - 1))
    out["architectures"] = ["SwinForImageClassification" if num_classes else "SwinModel"]
    if num_classes and len(out.get("id2label") or {}) != num_classes:
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_classes)}
        out["label2id"] = {f"LABEL_{i}": i for i in range(num_classes)}
    check_config(out)
    prefix = "swin." if num_classes else ""
    hf_state: StateDict = {}
    for tk, hf_keys in _rules(out, prefix, bool(num_classes)):
        if tk not in timm_state:
            raise CheckpointError(f"timm Swin state dict lacks {tk!r}: pass the full model.state_dict()")
        for k, part in zip(hf_keys, timm_state[tk].chunk(len(hf_keys), 0), strict=True):
            hf_state[k] = part.clone()
    return out, hf_state


SWIN = register_hf(HFConverter(("swin",), swin_to_timm, swin_to_hf, accepts_timm))
