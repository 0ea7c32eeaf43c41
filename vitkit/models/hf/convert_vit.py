"""``transformers`` ViT / DeiT / DINOv2 ⇄ timm ``VisionTransformer`` (exact, both directions).

What is exact (the targets the tests check within 1e-5):

* ``ViTForImageClassification`` logits = timm logits (both read the final-LayerNorm'd CLS token);
* ``DeiTForImageClassificationWithTeacher`` logits (mean of the CLS and distillation heads) = timm
  ``deit_*_distilled*`` logits in eval mode;
* backbones (``ViTModel``, ``DeiTModel``, ``Dinov2Model``): timm ``forward_features`` = ``last_hidden_state``, and
  the timm features (``num_classes=0``) = ``last_hidden_state[:, 0]`` (= DINOv2's ``pooler_output``) for ViT and
  DINOv2, the mean of ``last_hidden_state[:, 0]`` and ``[:, 1]`` (CLS and distillation token) for DeiT.

Dropped on the way in, logged, and not written back by :func:`to_hf`: ``ViTModel``/``DeiTModel``'s ``pooler``
(dense + tanh on the CLS token: timm's ViT has no such layer; ``pooler_output`` is not reproduced) and DINOv2's
``mask_token`` (used only with ``bool_masked_pos`` in pre-training; written back as zeros, its init value).
Refused by name (``UnsupportedModelError``): ``Dinov2ForImageClassification`` (its head reads
cat(CLS, mean of patch tokens), which timm cannot express), ``DeiTForImageClassification`` (a CLS-only head next
to a distillation token), the masked-image-modeling heads, and activations timm has no exact match for.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch

from ...errors import CheckpointError, UnsupportedModelError
from .registry import HFConverter, StateDict, register_hf

_log = logging.getLogger(__name__)

#: ``model_type`` → the task models' prefix before the backbone keys (``base_model_prefix`` in transformers).
_PREFIX = {"vit": "vit.", "deit": "deit.", "dinov2": "dinov2."}
#: HF ``hidden_act`` → timm ``act_layer`` name computing the same function (tanh-GELU variants within 1e-7).
_ACTS = {
    "gelu": "gelu",
    "gelu_python": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "quick_gelu": "quick_gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
_ACTS_BACK = {
    "gelu": "gelu",
    "gelu_tanh": "gelu_pytorch_tanh",
    "quick_gelu": "quick_gelu",
    "relu": "relu",
    "silu": "silu",
}
#: HF task models this converter reproduces exactly, and those it refuses (with the reason and what works).
_SUPPORTED = {
    "ViTModel",
    "ViTForImageClassification",
    "DeiTModel",
    "DeiTForImageClassificationWithTeacher",
    "Dinov2Model",
}
_REFUSED = {
    "Dinov2ForImageClassification": "its classifier reads cat(CLS, mean of patch tokens), which timm's ViT cannot "
    "express exactly; save its backbone (model.dinov2, a Dinov2Model) with save_pretrained and load that folder",
    "DeiTForImageClassification": "its CLS-only head sits next to a distillation token and timm's distilled DeiT "
    "averages both heads; use DeiTForImageClassificationWithTeacher, or save model.deit (a DeiTModel) and load that",
    "ViTForMaskedImageModeling": "the SimMIM decoder has no timm counterpart; save model.vit (a ViTModel), load that",
    "DeiTForMaskedImageModeling": "the SimMIM decoder has no timm counterpart; save model.deit (a DeiTModel), load it",
}
#: transformers-5 in-memory module names → the on-disk (``save_pretrained``) names this converter reads and writes.
_IN_MEMORY = [
    (re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.attention\.([qkv])_proj\."), None),
    (re.compile(r"^(encoder\.layer|layers)\.(\d+)\.attention\.o_proj\."), r"encoder.layer.\2.attention.output.dense."),
    (re.compile(r"^layers\.(\d+)\.mlp\.fc1\."), r"encoder.layer.\1.intermediate.dense."),
    (re.compile(r"^layers\.(\d+)\.mlp\.fc2\."), r"encoder.layer.\1.output.dense."),
    (re.compile(r"^layers\.(\d+)\."), r"encoder.layer.\1."),
]
_QKV_NAMES = {"q": "query", "k": "key", "v": "value"}
_SIZES = {192: "tiny", 384: "small", 768: "base", 1024: "large", 1280: "huge", 1536: "giant"}


#: ``(timm key, transformers key)`` of the layers around the blocks, the same both ways
_OUTER_KEYS = (
    ("cls_token", "embeddings.cls_token"),
    ("pos_embed", "embeddings.position_embeddings"),
    ("patch_embed.proj.weight", "embeddings.patch_embeddings.projection.weight"),
    ("patch_embed.proj.bias", "embeddings.patch_embeddings.projection.bias"),
    ("norm.weight", "layernorm.weight"),
    ("norm.bias", "layernorm.bias"),
)


# ---------------------------------------------------------------------------------------------------- config


def _pair(v: Any, what: str) -> list[int]:
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise CheckpointError(f"config.json {what} {v!r} is not an int or a pair: fix config.json")
        return [int(v[0]), int(v[1])]
    return [int(v), int(v)]


def _ratio_for(dim: int, hidden: int) -> float:
    """An ``mlp_ratio`` with ``int(dim * ratio) == hidden`` (timm's rule for the MLP width)."""
    for r in (hidden / dim, (hidden + 0.5) / dim):
        if int(dim * r) == hidden:
            return r
    raise UnsupportedModelError(f"MLP width {hidden} cannot be written as int({dim} * mlp_ratio) in timm")


def _swiglu_hidden(dim: int, mlp_ratio: float) -> int:
    """HF DINOv2's SwiGLU width: two thirds of the MLP width, rounded up to a multiple of 8."""
    return (int(int(dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8


def _arch_of(config: dict[str, Any], state: StateDict, model_type: str) -> str:
    """The HF task class: ``architectures[0]`` when given, else told from the head keys."""
    names = config.get("architectures") or []
    if names:
        return str(names[0])
    base = {"vit": "ViTModel", "deit": "DeiTModel", "dinov2": "Dinov2Model"}[model_type]
    if any(k.startswith("decoder.") for k in state):
        return base.replace("Model", "ForMaskedImageModeling")
    if "cls_classifier.weight" in state:
        return "DeiTForImageClassificationWithTeacher"
    if "classifier.weight" in state:
        return base.replace("Model", "ForImageClassification")
    return base


def _num_labels(config: dict[str, Any]) -> int:
    """transformers' rule: ``num_labels``, else the size of ``id2label``, else 2."""
    if config.get("num_labels") is not None:
        return int(config["num_labels"])
    if config.get("id2label") is not None:
        return len(config["id2label"])
    return 2


def _timm_name(mt: str, size: str, patch: int, swiglu: bool) -> str:
    """A timm ViT entry point of the family (every kwarg is still given explicitly; the name is for humans, and
    carries the class-valued options kwargs cannot: the distilled DeiT class, DINOv2's packed SwiGLU MLP)."""
    import timm

    if mt == "deit":
        cands = [f"deit_{size}_distilled_patch16_224", "deit_base_distilled_patch16_224"]
    elif mt == "dinov2":
        cands = ["vit_giant_patch14_dinov2"] if swiglu else [f"vit_{size}_patch14_dinov2", "vit_base_patch14_dinov2"]
    else:
        cands = [f"vit_{size}_patch{patch}_224", f"vit_{size}_patch16_224", "vit_base_patch16_224"]
    return next(c for c in cands if timm.is_model(c))


def _hf_layout(config: dict[str, Any], arch: str) -> dict[str, Any]:
    """Everything both directions need from a config: dims, flags and the timm name + kwargs."""
    mt = config["model_type"]
    dim, depth, heads = int(config["hidden_size"]), int(config["num_hidden_layers"]), int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or (dim // heads if dim % heads == 0 else 0))
    narrow = head_dim > 0 and heads * head_dim != dim  # e.g. a uniformly head-pruned export
    if head_dim <= 0 or (narrow and mt != "vit"):
        raise UnsupportedModelError(
            f"attention head_dim {config.get('head_dim')} with hidden_size {dim} and {heads} heads: timm's "
            f"{'ViT' if mt == 'vit' else mt} needs head_dim = hidden_size / num_attention_heads"
        )
    swiglu = bool(config.get("use_swiglu_ffn", False)) if mt == "dinov2" else False
    act = str(config.get("hidden_act", "gelu"))
    if not swiglu and act not in _ACTS:
        raise UnsupportedModelError(
            f"hidden_act {act!r} has no exact timm activation; supported: {', '.join(sorted(_ACTS))}"
        )
    if mt == "dinov2":
        ratio = float(config.get("mlp_ratio", 4))
        mlp = _swiglu_hidden(dim, ratio) if swiglu else int(dim * ratio)
    else:
        mlp = int(config.get("intermediate_size", 4 * dim))
    img, patch = _pair(config.get("image_size", 224), "image_size"), _pair(config.get("patch_size", 16), "patch_size")
    chans = int(config.get("num_channels", 3))
    head = arch not in ("ViTModel", "DeiTModel", "Dinov2Model")
    labels = _num_labels(config) if head else 0
    name = _timm_name(mt, _SIZES.get(dim, "base"), patch[0], swiglu)
    kwargs: dict[str, Any] = {
        "img_size": img,
        "patch_size": patch,
        "in_chans": chans,
        "embed_dim": dim,
        "depth": depth,
        "num_heads": heads,
        "mlp_ratio": _ratio_for(dim, 2 * mlp if swiglu else mlp),
        "qkv_bias": bool(config.get("qkv_bias", True)),
        "num_classes": labels,
        "act_layer": "silu" if swiglu else _ACTS[act],
        "vitkit_norm_eps": float(config.get("layer_norm_eps", 1e-6 if mt == "dinov2" else 1e-12)),
    }
    if mt == "dinov2":
        kwargs["init_values"] = float(config.get("layerscale_value") or 1.0)
    if narrow:  # heads × head_dim ≠ hidden_size: vitkit's timm ViT with a free head width
        name, kwargs["attn_head_dim"] = "vitkit_vit", head_dim
    width = heads * head_dim
    return {
        "mt": mt,
        "dim": dim,
        "depth": depth,
        "mlp": mlp,
        "swiglu": swiglu,
        "name": name,
        "kwargs": kwargs,
        "width": width,
    }


def _expected(lay: dict[str, Any], arch: str) -> dict[str, tuple[int, ...]]:
    """HF on-disk key → shape for this config and task class (backbone keys without the task prefix)."""
    mt, d, mlp, kw = lay["mt"], lay["dim"], lay["mlp"], lay["kwargs"]
    (ih, iw), (ph, pw) = kw["img_size"], kw["patch_size"]
    n_tok = (ih // ph) * (iw // pw) + (2 if mt == "deit" else 1)
    exp = {
        "embeddings.cls_token": (1, 1, d),
        "embeddings.position_embeddings": (1, n_tok, d),
        "embeddings.patch_embeddings.projection.weight": (d, kw["in_chans"], ph, pw),
        "embeddings.patch_embeddings.projection.bias": (d,),
        "layernorm.weight": (d,),
        "layernorm.bias": (d,),
    }
    if mt == "deit":
        exp["embeddings.distillation_token"] = (1, 1, d)
    for i in range(lay["depth"]):
        p = f"encoder.layer.{i}."
        a = lay["width"]  # attention width (hidden_size unless heads were pruned)
        for n in ("query", "key", "value"):
            exp[f"{p}attention.attention.{n}.weight"] = (a, d)
            if kw["qkv_bias"]:
                exp[f"{p}attention.attention.{n}.bias"] = (a,)
        exp[f"{p}attention.output.dense.weight"] = (d, a)
        exp[f"{p}attention.output.dense.bias"] = (d,)
        if mt == "dinov2":
            norms, fc1, fc2 = ("norm1", "norm2"), "mlp.fc1", "mlp.fc2"
            if lay["swiglu"]:
                fc1, fc2 = "mlp.weights_in", "mlp.weights_out"
            exp[f"{p}layer_scale1.lambda1"] = (d,)
            exp[f"{p}layer_scale2.lambda1"] = (d,)
        else:
            norms, fc1, fc2 = ("layernorm_before", "layernorm_after"), "intermediate.dense", "output.dense"
        for n in norms:
            exp[f"{p}{n}.weight"] = (d,)
            exp[f"{p}{n}.bias"] = (d,)
        exp[f"{p}{fc1}.weight"] = (2 * mlp if lay["swiglu"] else mlp, d)
        exp[f"{p}{fc1}.bias"] = (2 * mlp if lay["swiglu"] else mlp,)
        exp[f"{p}{fc2}.weight"] = (d, mlp)
        exp[f"{p}{fc2}.bias"] = (d,)
    n_cls = kw["num_classes"]
    if n_cls and arch == "DeiTForImageClassificationWithTeacher":
        for h in ("cls_classifier", "distillation_classifier"):
            exp[f"{h}.weight"], exp[f"{h}.bias"] = (n_cls, d), (n_cls,)
    elif n_cls:
        exp["classifier.weight"], exp["classifier.bias"] = (n_cls, d), (n_cls,)
    return exp


# ------------------------------------------------------------------------------------------------- HF → timm
def _canonical(state: StateDict, model_type: str) -> StateDict:
    """Strip the task prefix (``vit.``, ``deit.``, ``dinov2.``) and map in-memory names to on-disk ones."""
    prefix = _PREFIX[model_type]
    prefixed = any(k.startswith(prefix) for k in state)
    out: StateDict = {}
    for key, v in state.items():
        k = key.removeprefix(prefix) if prefixed else key
        for pat, repl in _IN_MEMORY:
            m = pat.match(k)
            if m is None:
                continue
            if repl is None:  # layers.N.attention.q_proj.* → encoder.layer.N.attention.attention.query.*
                k = f"encoder.layer.{m.group(1)}.attention.attention.{_QKV_NAMES[m.group(2)]}." + k[m.end() :]
            else:
                k = pat.sub(repl, k)
            break
        out[k] = v
    for key in [k for k in out if ".mlp.gate_proj." in k]:  # DINOv2 SwiGLU in memory: gate/up/down → packed
        up, base = key.replace(".gate_proj.", ".up_proj."), key.replace(".gate_proj.", ".weights_in.")
        if up in out:
            out[base] = torch.cat([out.pop(key), out.pop(up)])
    for key in [k for k in out if ".mlp.down_proj." in k]:
        out[key.replace(".down_proj.", ".weights_out.")] = out.pop(key)
    return out


def _check_fit(state: StateDict, exp: dict[str, tuple[int, ...]], dropped: set[str]) -> None:
    from ..load import state_mismatch

    problem = state_mismatch(state, exp, ignore=dropped)
    if problem:
        raise CheckpointError(
            f"config.json does not match the weights: {problem}; "
            "use the config.json these weights were saved with (save_pretrained writes both)"
        )


def to_timm(config: dict[str, Any], state: StateDict) -> tuple[str, dict[str, Any], StateDict]:
    mt = config["model_type"]
    src = _canonical(state, mt)
    arch = _arch_of(config, src, mt)
    if arch in _REFUSED:
        raise UnsupportedModelError(f"{arch} cannot be loaded as an exact timm model: {_REFUSED[arch]}")
    if arch not in _SUPPORTED or not arch.lower().startswith(mt.lower()):
        raise UnsupportedModelError(
            f"{arch} (model_type {mt!r}) is not a supported {mt} task model; supported: {', '.join(sorted(_SUPPORTED))}"
        )
    lay = _hf_layout(config, arch)
    dropped = {k for k in src if k.startswith("pooler.") or k == "embeddings.mask_token"}
    _check_fit(src, _expected(lay, arch), dropped)
    if any(k.startswith("pooler.") for k in dropped):
        _log.warning(
            "%s: dropped the pooler (dense + tanh; timm's ViT has none): pooler_output is not reproduced, the timm "
            "features are last_hidden_state[:, 0]",
            arch,
        )
    if "embeddings.mask_token" in dropped:
        _log.info("dropped DINOv2's mask_token (only used with bool_masked_pos; timm has none)")
    out: StateDict = {t: src[h] for t, h in _OUTER_KEYS}
    if mt == "deit":
        out["dist_token"] = src["embeddings.distillation_token"]
    for i in range(lay["depth"]):
        p, t = f"encoder.layer.{i}.", f"blocks.{i}."
        a = f"{p}attention.attention."
        out[f"{t}attn.qkv.weight"] = torch.cat([src[f"{a}{n}.weight"] for n in ("query", "key", "value")])
        if lay["kwargs"]["qkv_bias"]:
            out[f"{t}attn.qkv.bias"] = torch.cat([src[f"{a}{n}.bias"] for n in ("query", "key", "value")])
        for timm_k, hf_k in _block_map(mt, lay["swiglu"]).items():
            out[t + timm_k] = src[p + hf_k]
    for timm_h, hf_h in _heads(mt).items():
        if f"{hf_h}.weight" in src:
            out[f"{timm_h}.weight"], out[f"{timm_h}.bias"] = src[f"{hf_h}.weight"], src[f"{hf_h}.bias"]
    return lay["name"], lay["kwargs"], out


def _heads(mt: str) -> dict[str, str]:
    """timm head → HF classifier (DeiT with teacher: the CLS and distillation heads)."""
    return (
        {"head": "cls_classifier", "head_dist": "distillation_classifier"} if mt == "deit" else {"head": "classifier"}
    )


def _block_map(mt: str, swiglu: bool) -> dict[str, str]:
    """timm block key (after ``blocks.N.``) → HF layer key (after ``encoder.layer.N.``), qkv excluded."""
    m = {"attn.proj.weight": "attention.output.dense.weight", "attn.proj.bias": "attention.output.dense.bias"}
    if mt == "dinov2":
        fc1, fc2 = ("mlp.weights_in", "mlp.weights_out") if swiglu else ("mlp.fc1", "mlp.fc2")
        m.update({"ls1.gamma": "layer_scale1.lambda1", "ls2.gamma": "layer_scale2.lambda1"})
        norms = ("norm1", "norm2")
    else:
        fc1, fc2, norms = "intermediate.dense", "output.dense", ("layernorm_before", "layernorm_after")
    for timm_n, hf_n in zip(("norm1", "norm2"), norms, strict=True):
        m[f"{timm_n}.weight"], m[f"{timm_n}.bias"] = f"{hf_n}.weight", f"{hf_n}.bias"
    for timm_n, hf_n in (("mlp.fc1", fc1), ("mlp.fc2", fc2)):
        m[f"{timm_n}.weight"], m[f"{timm_n}.bias"] = f"{hf_n}.weight", f"{hf_n}.bias"
    return m


# ------------------------------------------------------------------------------------------------- timm → HF
_NOT_EXPRESSIBLE = {
    "reg_token": "register tokens (use model_type dinov2_with_registers, not converted yet)",
    "norm_pre.weight": "a pre-norm after the embeddings (CLIP-style)",
    "fc_norm.weight": "a norm after pooling (global_pool='avg')",
    "attn_pool.latent": "attention pooling (global_pool='map')",
    "blocks.0.attn.q_norm.weight": "qk_norm",
    "blocks.0.attn.norm.weight": "a norm inside attention (scale_attn_norm)",
    "blocks.0.mlp.norm.weight": "a norm inside the MLP (scale_mlp_norm)",
}


def _timm_features(name: str, kwargs: dict[str, Any], state: StateDict) -> dict[str, Any]:
    plain = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.weight")
    for key in plain:
        if key not in state and key != "cls_token":
            raise UnsupportedModelError(f"{name} has no {key}: not a plain ViT that transformers' ViT/DINOv2 can hold")
    for key, what in _NOT_EXPRESSIBLE.items():
        if key in state:
            raise UnsupportedModelError(f"{name} has {what}, which transformers' ViT/DeiT/DINOv2 cannot hold")
    if "cls_token" not in state:
        raise UnsupportedModelError(f"{name} has no class token, which transformers' ViT/DeiT/DINOv2 need")
    meta = _meta_model(name, kwargs)
    pool = getattr(meta, "global_pool", "token")
    if pool != "token" or getattr(meta, "no_embed_class", False):
        raise UnsupportedModelError(f"{name} pools with global_pool={pool!r}: transformers' ViT reads the CLS token")
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    d = state["cls_token"].shape[-1]
    fc1, fc2 = state["blocks.0.mlp.fc1.weight"], state["blocks.0.mlp.fc2.weight"]
    swiglu = fc1.shape[0] == 2 * fc2.shape[1]
    act = _act_name(getattr(meta.blocks[0].mlp, "act", None))
    if swiglu and (act != "silu" or getattr(meta.blocks[0].mlp, "gate_last", True)):
        raise UnsupportedModelError(
            f"{name} has a gated MLP other than DINOv2's SwiGLU, which transformers cannot hold"
        )
    if fc1.shape[0] != fc2.shape[1] and not swiglu:
        raise UnsupportedModelError(f"{name} has MLP widths {fc1.shape[0]} → {fc2.shape[1]} that do not chain")
    if act is None:
        raise UnsupportedModelError(
            f"{name} uses activation {type(meta.blocks[0].mlp.act).__name__}; transformers takes {sorted(_ACTS_BACK)}"
        )
    heads = int(meta.blocks[0].attn.num_heads)
    patch = tuple(state["patch_embed.proj.weight"].shape[-2:])
    n_prefix = 2 if "dist_token" in state else 1
    n_patch = state["pos_embed"].shape[1] - n_prefix
    img = kwargs.get("img_size")
    img = list(_pair(img, "img_size")) if img is not None else None
    if img is None or (img[0] // patch[0]) * (img[1] // patch[1]) != n_patch:
        side = int(round(n_patch**0.5))
        img = [side * patch[0], side * patch[1]]
    return {
        "depth": depth,
        "dim": d,
        "heads": heads,
        "mlp": fc2.shape[1],
        "swiglu": swiglu,
        "act": act,
        "patch": list(patch),
        "img": img,
        "chans": state["patch_embed.proj.weight"].shape[1],
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "n_cls": state["head.weight"].shape[0] if "head.weight" in state else 0,
        "eps": float(kwargs.get("vitkit_norm_eps", getattr(meta.norm, "eps", 1e-6))),
        "layerscale": "blocks.0.ls1.gamma" in state,
        "distilled": "dist_token" in state,
    }


def _meta_model(name: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    """The timm model ``name`` + ``kwargs`` builds, on the meta device (no memory, no init): read its structure."""
    import timm

    from ..load import VITKIT_KWARGS
    from ..presets import PRESETS

    kw = {k: v for k, v in kwargs.items() if k not in VITKIT_KWARGS and k != "pretrained_cfg_overlay"}
    if name in PRESETS:
        name, kw = PRESETS[name]["arch"], {**PRESETS[name]["kwargs"], **kw}
        kw.pop("pretrained_cfg_overlay", None)
    try:
        return timm.create_model(name, pretrained=False, device="meta", **kw)
    except Exception as exc:  # an unknown name or kwargs
        raise UnsupportedModelError(f"cannot rebuild {name!r} with {sorted(kw)} to read its structure: {exc}") from None


def _act_name(act: Any) -> str | None:
    """timm activation module → the timm name :data:`_ACTS_BACK` knows, else None."""
    from timm.layers import GELU, GELUTanh, QuickGELU

    if isinstance(act, torch.nn.GELU):
        return "gelu_tanh" if act.approximate == "tanh" else "gelu"
    kinds = [(GELUTanh, "gelu_tanh"), (GELU, "gelu"), (QuickGELU, "quick_gelu")]
    kinds += [(torch.nn.ReLU, "relu"), (torch.nn.SiLU, "silu")]
    for cls, n in kinds:
        if isinstance(act, cls):
            return n
    return None


def _hf_arch_for(f: dict[str, Any], config: dict[str, Any] | None) -> tuple[str, str]:
    """(model_type, task class) for timm features ``f``; the source config's class when it still fits."""
    if f["distilled"]:
        mt = "deit"
        if f["layerscale"]:
            raise UnsupportedModelError("a distilled DeiT with layer scale cannot be held by transformers' DeiT")
        fits = {"DeiTForImageClassificationWithTeacher": f["n_cls"] > 0, "DeiTModel": f["n_cls"] == 0}
    elif f["layerscale"] or f["swiglu"]:
        mt = "dinov2"
        if f["n_cls"]:
            raise UnsupportedModelError(
                "a ViT with layer scale and a classifier head: transformers' Dinov2ForImageClassification reads "
                "cat(CLS, mean of patch tokens), not the CLS token; export the backbone (num_classes=0) instead"
            )
        fits = {"Dinov2Model": True}
    else:
        mt = "vit"
        fits = {"ViTForImageClassification": True, "ViTModel": f["n_cls"] == 0}
    if config and config.get("model_type") == mt:
        src = (config.get("architectures") or [""])[0]
        if fits.get(src):
            return mt, src
    default = {"deit": "DeiTForImageClassificationWithTeacher", "dinov2": "Dinov2Model", "vit": "ViTModel"}[mt]
    if mt == "vit" and f["n_cls"]:
        default = "ViTForImageClassification"
    if mt == "deit" and not f["n_cls"]:
        default = "DeiTModel"
    return mt, default


def to_hf(
    timm_name: str, timm_kwargs: dict[str, Any], timm_state: StateDict, config: dict[str, Any] | None
) -> tuple[dict[str, Any], StateDict]:
    f = _timm_features(timm_name, dict(timm_kwargs or {}), timm_state)
    mt, arch = _hf_arch_for(f, config)
    d = f["dim"]
    cfg: dict[str, Any] = dict(config) if config and config.get("model_type") == mt else {}
    cfg.update(
        model_type=mt,
        architectures=[arch],
        hidden_size=d,
        num_hidden_layers=f["depth"],
        num_attention_heads=f["heads"],
        image_size=f["img"][0] if f["img"][0] == f["img"][1] else f["img"],
        patch_size=f["patch"][0] if f["patch"][0] == f["patch"][1] else f["patch"],
        num_channels=f["chans"],
        qkv_bias=f["qkv_bias"],
        layer_norm_eps=f["eps"],
    )
    if not f["swiglu"]:
        cfg["hidden_act"] = (
            _ACTS_BACK[f["act"]] if _ACTS.get(cfg.get("hidden_act", "")) != f["act"] else cfg["hidden_act"]
        )
    cfg.setdefault("hidden_act", "gelu")
    if mt == "dinov2":
        cfg["use_swiglu_ffn"] = f["swiglu"]
        cfg["mlp_ratio"] = _hf_dinov2_ratio(d, f["mlp"], f["swiglu"], cfg.get("mlp_ratio"))
        cfg.setdefault("layerscale_value", 1.0)
        cfg.setdefault("use_mask_token", True)
    else:
        cfg["intermediate_size"] = f["mlp"]
    if f["n_cls"]:
        if _num_labels(cfg) != f["n_cls"]:
            cfg["id2label"] = {str(i): f"LABEL_{i}" for i in range(f["n_cls"])}
            cfg["label2id"] = {f"LABEL_{i}": i for i in range(f["n_cls"])}
        cfg.pop("num_labels", None)
    prefix = _PREFIX[mt] if arch not in ("ViTModel", "DeiTModel", "Dinov2Model") else ""
    _check_uniform(timm_name, timm_state, f["depth"], d)
    s = _Tracked(timm_state)
    out: StateDict = {h: s[t] for t, h in _OUTER_KEYS}
    if mt == "deit":
        out["embeddings.distillation_token"] = s["dist_token"]
    if mt == "dinov2" and cfg.get("use_mask_token", True):
        out["embeddings.mask_token"] = torch.zeros(1, d, dtype=s["cls_token"].dtype)
    for i in range(f["depth"]):
        p, t = f"encoder.layer.{i}.", f"blocks.{i}."
        for n, w in zip(("query", "key", "value"), s[f"{t}attn.qkv.weight"].chunk(3), strict=True):
            out[f"{p}attention.attention.{n}.weight"] = w.clone()
        if f["qkv_bias"]:
            for n, b in zip(("query", "key", "value"), s[f"{t}attn.qkv.bias"].chunk(3), strict=True):
                out[f"{p}attention.attention.{n}.bias"] = b.clone()
        for timm_k, hf_k in _block_map(mt, f["swiglu"]).items():
            out[p + hf_k] = s[t + timm_k]
    out = {prefix + k: v for k, v in out.items()}
    if f["n_cls"]:
        for timm_h, hf_h in _heads(mt).items():
            out[f"{hf_h}.weight"], out[f"{hf_h}.bias"] = s[f"{timm_h}.weight"], s[f"{timm_h}.bias"]
    left = sorted(set(timm_state) - s.used)
    if left:
        raise UnsupportedModelError(
            f"{timm_name} holds {left[:3]}{' ...' if len(left) > 3 else ''} that transformers' {arch} has no place for"
        )
    return cfg, out


class _Tracked(dict):
    """A state dict that records which keys were read (to refuse the ones a conversion would drop)."""

    def __init__(self, state: StateDict) -> None:
        super().__init__(state)
        self.used: set[str] = set()

    def __getitem__(self, key: str) -> torch.Tensor:
        self.used.add(key)
        return super().__getitem__(key)


def _check_uniform(name: str, state: StateDict, depth: int, dim: int) -> None:
    """Every block has block 0's keys and shapes, attention keeps all heads: one config describes them all."""
    ref = {k.split(".", 2)[2]: v.shape for k, v in state.items() if k.startswith("blocks.0.")}
    for i in range(depth):
        own = {k.split(".", 2)[2]: v.shape for k, v in state.items() if k.startswith(f"blocks.{i}.")}
        if own != ref:
            diff = sorted(k for k in set(own) | set(ref) if own.get(k) != ref.get(k))
            raise UnsupportedModelError(
                f"{name}: block {i} differs from block 0 at {diff[:3]} (per-layer widths, pruned heads or added "
                "modules): transformers' config describes every layer alike"
            )
    width = ref["attn.qkv.weight"][0] // 3  # heads × head_dim: below hidden_size after uniform head pruning
    if tuple(ref["attn.qkv.weight"]) != (3 * width, dim) or tuple(ref["attn.proj.weight"]) != (dim, width):
        raise UnsupportedModelError(
            f"{name}: attention projections {tuple(ref['attn.qkv.weight'])} / {tuple(ref['attn.proj.weight'])} do not "
            "form one attention of hidden_size inputs: transformers cannot hold it"
        )


def _hf_dinov2_ratio(dim: int, hidden: int, swiglu: bool, current: Any) -> float:
    """A DINOv2 ``mlp_ratio`` giving MLP width ``hidden`` (the SwiGLU width rounding included): the source's, else
    an integer (recent ``Dinov2Config`` accepts only ints), else a float."""
    width = (lambda r: _swiglu_hidden(dim, r)) if swiglu else (lambda r: int(dim * r))
    cands = ([current] if isinstance(current, (int, float)) else []) + list(range(1, 17))
    cands += [hidden * 1.5 / dim + k / (8 * dim) for k in range(9)] if swiglu else [hidden / dim, (hidden + 0.5) / dim]
    for r in cands:
        if width(r) == hidden:
            return r
    raise UnsupportedModelError(f"MLP width {hidden} (dim {dim}) is not a width transformers' DINOv2 can build")


def accepts_timm(timm_name: str, timm_kwargs: dict[str, Any]) -> bool:
    """Plain timm ViTs (``vit_*``, ``deit_*``), DINOv2 ViTs included; not CLIP/SigLIP/EVA-style variants."""
    import timm

    base = timm_name.split(".")[0]
    if not timm.is_model(base) or not (base.startswith("vit_") or base.startswith("deit_")):
        return False
    if any(tag in base for tag in ("clip", "siglip", "eva", "rope", "reg", "gap", "map", "so400m", "so150m", "naflex")):
        return False
    return not any(k in (timm_kwargs or {}) for k in ("reg_tokens", "pre_norm", "qk_norm", "fc_norm", "no_embed_class"))


register_hf(HFConverter(model_types=("vit", "deit", "dinov2"), to_timm=to_timm, to_hf=to_hf, accepts_timm=accepts_timm))
