"""Hugging Face CLIP and SigLIP vision towers ⇄ timm ``VisionTransformer``, exact in both directions.

* ``clip_vision_model`` (``CLIPVisionModel``): pooled output = ``post_layernorm`` of the CLS token → timm ViT with
  ``pre_norm=True`` (so no patch-embedding bias), a class token, ``global_pool="token"``, ``num_classes=0``.
  ``CLIPVisionModelWithProjection`` (same ``model_type``) adds ``visual_projection``: it becomes the timm ``head``
  (``num_classes=projection_dim``, zero bias), so the timm output is ``image_embeds``.
* ``clip`` (a full ``CLIPModel`` folder): only the vision tower and ``visual_projection`` are converted (output =
  ``get_image_features``); the text tower, ``text_projection`` and ``logit_scale`` are ignored, and ``to_hf`` writes
  a ``CLIPVisionModelWithProjection`` folder.
* ``siglip_vision_model`` / ``siglip`` (``SiglipVisionModel``, or the vision tower of a full ``SiglipModel``, text
  tower ignored): no class token, the MAP attention-pool head = timm ``global_pool="map"``; output =
  ``pooler_output``.

LayerNorm eps: the timm CLIP names use 1e-5 and the SigLIP names 1e-6; any other ``layer_norm_eps`` goes in the
vitkit kwarg ``vitkit_norm_eps`` (applied to every LayerNorm by ``vitkit.models.build_arch``). Keys are accepted
with or without the ``vision_model.`` prefix; ``to_hf`` writes the layout ``save_pretrained`` writes.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from ...errors import CheckpointError, UnsupportedModelError
from .registry import HFConverter, StateDict, meta_timm, register_hf

CLIP_TIMM_NAME = "vit_base_patch16_clip_224"
SIGLIP_TIMM_NAME = "vit_base_patch16_siglip_224"
_TIMM_EPS = {CLIP_TIMM_NAME: 1e-5, SIGLIP_TIMM_NAME: 1e-6}

#: HF ``hidden_act`` → timm ``act_layer`` (only the ones computed identically)
_ACT_TO_TIMM = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh"}
#: defaults of the transformers vision configs, for config.json files that omit a field
_DEFAULTS = {
    "clip": dict(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, num_channels=3,
        image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    ),
    "siglip": dict(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, num_channels=3,
        image_size=224, patch_size=16, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=True,
    ),
}  # fmt: skip
#: keys of a full CLIPModel / SiglipModel that belong to the text side (ignored)
_TEXT_PREFIXES = ("text_model.", "text_projection.", "logit_scale", "logit_bias")

# A rule is (timm_keys, hf_keys, lead): the HF tensors concatenated on dim 0 equal the timm tensors concatenated on
# dim 0 once ``lead`` leading singleton dims are dropped from the timm side (cls token: 2, position embedding: 1).
Rule = tuple[list[str], list[str], int]


def _family(model_type: str) -> str:
    return "siglip" if model_type.startswith("siglip") else "clip"


def _vision_config(config: dict[str, Any]) -> dict[str, Any]:
    """The vision fields (defaults filled in) of a vision-tower or a full CLIP/SigLIP config."""
    mt = config.get("model_type", "")
    vis = config.get("vision_config") if mt in ("clip", "siglip") else config
    out = dict(_DEFAULTS[_family(mt)])
    out.update({k: v for k, v in (vis or {}).items() if v is not None})
    return out


def _mlp_ratio(hidden: int, inter: int) -> float:
    """A ratio timm turns back into exactly ``inter`` (``int(hidden * ratio)``)."""
    ratio = inter / hidden
    return ratio if int(hidden * ratio) == inter else (inter + 0.5) / hidden


def _check(family: str, vc: dict[str, Any]) -> None:
    if vc["hidden_act"] not in _ACT_TO_TIMM:
        raise UnsupportedModelError(
            f"{family} hidden_act={vc['hidden_act']!r} has no exact timm equivalent: supported {sorted(_ACT_TO_TIMM)}"
        )
    image, patch = vc["image_size"], vc["patch_size"]
    if not isinstance(image, int) or not isinstance(patch, int):
        raise UnsupportedModelError(
            f"{family} image_size={image!r}/patch_size={patch!r} must be ints: non-square inputs do not convert"
        )
    if image % patch:
        raise UnsupportedModelError(
            f"{family} image_size={image} is not a multiple of patch_size={patch}: use a divisible image_size"
        )
    if family == "siglip" and not vc.get("vision_use_head", True):
        raise UnsupportedModelError(
            "siglip vision_use_head=False has no pooled output to match: only SigLIP towers with the MAP head convert"
        )


def _rules(family: str, depth: int, prefix: str, projection: bool) -> list[Rule]:
    p = prefix
    rules: list[Rule] = [
        (["patch_embed.proj.weight"], [f"{p}embeddings.patch_embedding.weight"], 0),
        (["pos_embed"], [f"{p}embeddings.position_embedding.weight"], 1),
    ]
    if family == "clip":
        rules.append((["cls_token"], [f"{p}embeddings.class_embedding"], 2))
        rules += [([f"norm_pre.{t}"], [f"{p}pre_layrnorm.{t}"], 0) for t in ("weight", "bias")]
    else:
        rules.append((["patch_embed.proj.bias"], [f"{p}embeddings.patch_embedding.bias"], 0))
    for i in range(depth):
        hb, tb = f"{p}encoder.layers.{i}.", f"blocks.{i}."
        for t in ("weight", "bias"):
            rules.append(([f"{tb}norm1.{t}"], [f"{hb}layer_norm1.{t}"], 0))
            rules.append(([f"{tb}attn.qkv.{t}"], [f"{hb}self_attn.{n}_proj.{t}" for n in "qkv"], 0))
            rules.append(([f"{tb}attn.proj.{t}"], [f"{hb}self_attn.out_proj.{t}"], 0))
            rules.append(([f"{tb}norm2.{t}"], [f"{hb}layer_norm2.{t}"], 0))
            rules.append(([f"{tb}mlp.fc1.{t}"], [f"{hb}mlp.fc1.{t}"], 0))
            rules.append(([f"{tb}mlp.fc2.{t}"], [f"{hb}mlp.fc2.{t}"], 0))
    rules += [([f"norm.{t}"], [f"{p}post_layernorm.{t}"], 0) for t in ("weight", "bias")]
    if family == "siglip":
        h = f"{p}head."
        rules.append((["attn_pool.latent"], [f"{h}probe"], 0))
        rules.append((["attn_pool.q.weight", "attn_pool.kv.weight"], [f"{h}attention.in_proj_weight"], 0))
        rules.append((["attn_pool.q.bias", "attn_pool.kv.bias"], [f"{h}attention.in_proj_bias"], 0))
        for t in ("weight", "bias"):
            rules.append(([f"attn_pool.proj.{t}"], [f"{h}attention.out_proj.{t}"], 0))
            rules.append(([f"attn_pool.norm.{t}"], [f"{h}layernorm.{t}"], 0))
            rules.append(([f"attn_pool.mlp.fc1.{t}"], [f"{h}mlp.fc1.{t}"], 0))
            rules.append(([f"attn_pool.mlp.fc2.{t}"], [f"{h}mlp.fc2.{t}"], 0))
    if projection:
        rules.append((["head.weight"], ["visual_projection.weight"], 0))
    return rules


def vision_to_timm(config: dict[str, Any], state: StateDict) -> tuple[str, dict[str, Any], StateDict]:
    """HF CLIP/SigLIP config + state dict → ``(timm_name, timm_kwargs, timm_state)``."""
    family = _family(config.get("model_type", ""))
    vc = _vision_config(config)
    _check(family, vc)
    state = {k: v for k, v in state.items() if not k.startswith(_TEXT_PREFIXES) and not k.endswith("position_ids")}
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in state) else ""
    projection = family == "clip" and "visual_projection.weight" in state
    depth = int(vc["num_hidden_layers"])
    rules = _rules(family, depth, prefix, projection)
    used = {k for _, hf_keys, _ in rules for k in hf_keys}
    missing, extra = sorted(used - set(state)), sorted(set(state) - used)
    if missing or extra:
        raise CheckpointError(
            f"{family} vision checkpoint does not match its config.json: missing {missing[:3]}, unknown {extra[:3]}: "
            "check num_hidden_layers in config.json and that the folder holds a CLIP/SigLIP vision model"
        )
    timm_state: StateDict = {}
    for timm_keys, hf_keys, lead in rules:
        t = torch.cat([state[k] for k in hf_keys], 0) if len(hf_keys) > 1 else state[hf_keys[0]]
        if len(timm_keys) == 1:
            timm_state[timm_keys[0]] = t.reshape((1,) * lead + tuple(t.shape)).clone()
        else:  # one HF tensor → q / kv: q takes the first hidden_size rows
            q, kv = t.split([t.shape[0] // 3, 2 * t.shape[0] // 3], 0)
            timm_state[timm_keys[0]], timm_state[timm_keys[1]] = q.clone(), kv.clone()
    hidden = int(vc["hidden_size"])
    name = CLIP_TIMM_NAME if family == "clip" else SIGLIP_TIMM_NAME
    kwargs: dict[str, Any] = {
        "img_size": [int(vc["image_size"])] * 2,
        "patch_size": int(vc["patch_size"]),
        "in_chans": int(vc["num_channels"]),
        "embed_dim": hidden,
        "depth": depth,
        "num_heads": int(vc["num_attention_heads"]),
        "mlp_ratio": _mlp_ratio(hidden, int(vc["intermediate_size"])),
        "act_layer": _ACT_TO_TIMM[vc["hidden_act"]],
    }
    if family == "clip":
        kwargs.update(class_token=True, pre_norm=True, global_pool="token")
        if projection:
            w = timm_state["head.weight"]
            timm_state["head.bias"] = torch.zeros(w.shape[0], dtype=w.dtype)
        kwargs["num_classes"] = int(timm_state["head.weight"].shape[0]) if projection else 0
    else:
        kwargs.update(class_token=False, global_pool="map", num_classes=0)
    eps = float(vc["layer_norm_eps"])
    if not math.isclose(eps, _TIMM_EPS[name], rel_tol=0, abs_tol=1e-12):
        kwargs["vitkit_norm_eps"] = eps
    return name, kwargs, timm_state


def _meta_vit(timm_name: str, timm_kwargs: dict[str, Any]):
    """The timm model on the meta device, or None if it is not a timm VisionTransformer."""
    from timm.models.vision_transformer import VisionTransformer

    return meta_timm(timm_name, timm_kwargs, VisionTransformer)


def _act_name(act: torch.nn.Module) -> str | None:
    kind = type(act).__name__
    if kind == "QuickGELU":
        return "quick_gelu"
    if kind == "GELUTanh" or (kind == "GELU" and getattr(act, "approximate", "none") == "tanh"):
        return "gelu_pytorch_tanh"
    return "gelu" if kind == "GELU" else None


def _timm_family(model) -> str | None:
    """'clip' or 'siglip' if ``model`` has exactly one of those layouts and nothing HF cannot hold, else None."""
    blk = model.blocks[0]
    plain = (
        model.num_reg_tokens == 0
        and not model.no_embed_class
        and model.pos_embed is not None
        and not model.dynamic_img_size
        and isinstance(model.norm, torch.nn.LayerNorm)
        and isinstance(model.fc_norm, torch.nn.Identity)
        and isinstance(blk.ls1, torch.nn.Identity)
        and isinstance(blk.attn.q_norm, torch.nn.Identity)
        and blk.attn.qkv.bias is not None
        and blk.attn.proj.bias is not None
        and _act_name(blk.mlp.act) is not None
        and type(model.patch_embed.norm).__name__ == "Identity"
    )
    if not plain:
        return None
    pre = isinstance(model.norm_pre, torch.nn.LayerNorm)
    bias = model.patch_embed.proj.bias is not None
    if model.cls_token is not None and pre and not bias and model.global_pool == "token":
        return "clip"
    pool = model.attn_pool
    if (
        model.cls_token is None
        and not pre
        and bias
        and model.global_pool == "map"
        and pool is not None
        and type(pool).__name__ == "AttentionPoolLatent"
        and pool.latent_len == 1
        and pool.pos_embed is None
        and isinstance(pool.q, torch.nn.Linear)
        and isinstance(pool.k_norm, torch.nn.Identity)
        and pool.mlp is not None
        and pool.mlp.fc1.out_features == blk.mlp.fc1.out_features
        and isinstance(model.head, torch.nn.Identity)
    ):
        return "siglip"
    return None


def accepts_timm(timm_name: str, timm_kwargs: dict[str, Any]) -> bool:
    """A timm ViT laid out like a CLIP image tower (pre-norm, class token) or a SigLIP one (MAP pool, no CLS)."""
    model = _meta_vit(timm_name, timm_kwargs)
    return model is not None and _timm_family(model) is not None


def vision_to_hf(
    timm_name: str, timm_kwargs: dict[str, Any], timm_state: StateDict, config: dict[str, Any] | None
) -> tuple[dict[str, Any], StateDict]:
    """timm CLIP/SigLIP ViT → ``(config.json dict, state dict)`` of ``CLIPVisionModel``,
    ``CLIPVisionModelWithProjection`` (timm head = projection) or ``SiglipVisionModel``."""
    model = _meta_vit(timm_name, timm_kwargs)
    family = _timm_family(model) if model is not None else None
    if family is None:
        raise UnsupportedModelError(
            f"{timm_name!r} with these kwargs is not laid out like a CLIP or SigLIP image tower "
            "(registers, layer scale, qk-norm, ... have no HF CLIP/SigLIP field): export it with the ViT converter"
        )
    blk = model.blocks[0]
    projection = family == "clip" and isinstance(model.head, torch.nn.Linear)
    if projection:
        bias = timm_state.get("head.bias")
        if bias is not None and bool(bias.ne(0).any()):
            raise UnsupportedModelError(
                "CLIP head has a non-zero bias, which visual_projection cannot hold: export it without the head"
            )
    eps = float(timm_kwargs.get("vitkit_norm_eps", model.norm.eps))
    arch: dict[str, Any] = {
        "model_type": "clip_vision_model" if family == "clip" else "siglip_vision_model",
        "hidden_size": int(model.embed_dim),
        "intermediate_size": int(blk.mlp.fc1.out_features),
        "num_hidden_layers": len(model.blocks),
        "num_attention_heads": int(blk.attn.num_heads),
        "num_channels": int(model.patch_embed.proj.in_channels),
        "image_size": int(model.patch_embed.img_size[0]),
        "patch_size": int(model.patch_embed.patch_size[0]),
        "hidden_act": _act_name(blk.mlp.act),
        "layer_norm_eps": eps,
    }
    if model.patch_embed.img_size[0] != model.patch_embed.img_size[1] or (
        model.patch_embed.patch_size[0] != model.patch_embed.patch_size[1]
    ):
        raise UnsupportedModelError("timm ViT with a non-square image or patch size: HF CLIP/SigLIP hold one int each")
    src = copy.deepcopy(config) if config else {}
    if src.get("model_type") in ("clip", "siglip"):  # a full model: keep its vision part only
        top = src
        src = dict(top.get("vision_config") or {})
        if "projection_dim" in top:
            src["projection_dim"] = top["projection_dim"]
    out = src
    out.update(arch)
    if family == "clip":
        out["architectures"] = ["CLIPVisionModelWithProjection" if projection else "CLIPVisionModel"]
        if projection:
            out["projection_dim"] = int(model.head.out_features)
    else:
        out["architectures"] = ["SiglipVisionModel"]
        out["vision_use_head"] = True
    _check(family, _vision_config(out))
    prefix = "vision_model." if projection else ""
    hf_state: StateDict = {}
    for timm_keys, hf_keys, lead in _rules(family, len(model.blocks), prefix, projection):
        absent = [k for k in timm_keys if k not in timm_state]
        if absent:
            raise CheckpointError(f"timm state dict lacks {absent[0]!r}: pass the full model.state_dict()")
        t = torch.cat([timm_state[k] for k in timm_keys], 0) if len(timm_keys) > 1 else timm_state[timm_keys[0]]
        t = t.reshape(tuple(t.shape)[lead:]) if lead else t
        for k, part in zip(hf_keys, t.chunk(len(hf_keys), 0), strict=True):
            hf_state[k] = part.clone()
    return out, hf_state


CLIP = register_hf(
    HFConverter(
        ("clip_vision_model", "clip", "siglip_vision_model", "siglip"), vision_to_timm, vision_to_hf, accepts_timm
    )
)
