"""open_clip image towers as timm VisionTransformers, and class-prompt text embeddings for zero-shot accuracy.

``from_open_clip(clip)`` converts open_clip's own ``VisionTransformer`` (``clip.visual``) exactly into a timm
ViT whose output is the image embedding (``clip.encode_image``): class token, ``pre_norm`` for ``ln_pre``, a
bias-free patch embedding, token pooling after ``ln_post``, and ``proj`` as a linear head with zero bias. The model
is built through :func:`vitkit.models.build_arch`, so every vitkit transform, artifact and export works on it and
an artifact rebuilds without open_clip installed. ``vitkit.load("open_clip:ViT-B-32/openai")`` does the same from a
name. :func:`text_embeddings` / :func:`write_class_embeddings` make the class-prompt file that
:func:`vitkit.models.zero_shot.zero_shot_head` turns into a classifier.

``open_clip`` is an optional extra (``pip install 'vitkit[clip]'``): it is imported inside functions only.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError, ConfigError, UnsupportedModelError
from .load import ARCH_ATTR, NAME_LOADERS, build_arch, load_state_dict_strict

_log = logging.getLogger(__name__)

PREFIX = "open_clip:"
#: timm's CLIP image-tower architecture: ``pre_norm=True`` and LayerNorm eps 1e-5, as open_clip builds its towers
TIMM_ARCH = "vit_base_patch16_clip_224"
TIMM_EPS = 1e-5
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_TEMPLATES = ("a photo of a {}.",)
#: vision_cfg keys whose only supported value is the default (anything else is refused by name)
_REFUSED_IF_SET = {
    "attentional_pool": False,
    "no_ln_pre": False,
    "final_ln_after_pool": False,
    "output_tokens": False,
    "timm_model_name": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
}
_HARMLESS_KEYS = {
    "layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size", "ls_init_value", "patch_dropout",
    "attn_pooler_queries", "attn_pooler_heads", "pos_embed_type", "pool_type", "act_kwargs", "norm_kwargs",
    "block_type", "timm_model_pretrained", "timm_pool", "timm_proj", "timm_proj_bias", "timm_drop", "timm_drop_path",
}  # fmt: skip


@dataclass(frozen=True)
class _Tower:
    """What the state dict does not say about a tower: heads, activation, norm eps, layer scale, preprocessing."""

    image_size: tuple[int, int]
    heads: int
    act: str | None  # timm act_layer name; None = nn.GELU (timm's default)
    eps: float
    layer_scale: bool
    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD
    interpolation: str = "bicubic"


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, list | tuple) else (int(v), int(v))


# -- reading a tower: from open_clip modules, or from an open_clip config dict ------------------------------------
def _tower_from_module(tower: nn.Module) -> _Tower:
    try:
        from open_clip.transformer import QuickGELU, ResidualAttentionBlock, VisionTransformer
    except ImportError:  # without open_clip installed this cannot be an open_clip tower
        VisionTransformer = None  # noqa: N806
    if VisionTransformer is None or not isinstance(tower, VisionTransformer):
        raise UnsupportedModelError(
            f"open_clip image tower {type(tower).__name__} is not open_clip's VisionTransformer (ModifiedResNet and "
            "timm trunks are not converted): load a timm trunk directly with vitkit.load(<timm name>)"
        )
    if getattr(tower, "attn_pool", None) is not None:
        raise UnsupportedModelError("open_clip tower has an attentional pooler (attentional_pool): not converted")
    for feature in ("final_ln_after_pool", "output_tokens"):
        if getattr(tower, feature, False):
            raise UnsupportedModelError(f"open_clip tower sets {feature}=True: only the default (False) is converted")
    if getattr(tower, "pool_type", "tok") != "tok":
        raise UnsupportedModelError(
            f"open_clip tower has pool_type={tower.pool_type!r}: only 'tok' (class-token pooling) is converted"
        )
    if isinstance(tower.ln_pre, nn.Identity):
        raise UnsupportedModelError("open_clip tower has no_ln_pre=True: only towers with ln_pre are converted")
    if getattr(tower, "proj", None) is None:
        raise UnsupportedModelError("open_clip tower has no proj (its head was pruned): keep proj to convert it")
    blocks = list(tower.transformer.resblocks)
    custom = [type(b).__name__ for b in blocks if type(b) is not ResidualAttentionBlock]
    if custom:
        raise UnsupportedModelError(
            f"open_clip tower uses {custom[0]} (qk_norm / scaled_cosine_attn / scale_* options): not converted"
        )
    acts = set()
    for b in blocks:
        a = b.mlp.gelu
        if isinstance(a, QuickGELU):
            acts.add("quick_gelu")
        elif type(a) is nn.GELU:
            acts.add({"none": None, "tanh": "gelu_tanh"}[a.approximate])
        else:
            raise UnsupportedModelError(f"open_clip tower activation {type(a).__name__} is not converted")
        attn = b.attn
        if not attn._qkv_same_embed_dim or attn.in_proj_bias is None or attn.out_proj.bias is None:
            raise UnsupportedModelError("open_clip tower attention without fused qkv biases is not converted")
        if attn.bias_k is not None or attn.add_zero_attn:
            raise UnsupportedModelError("open_clip tower attention with bias_k / add_zero_attn is not converted")
    if len(acts) > 1:
        raise UnsupportedModelError(f"open_clip tower mixes activations {sorted(map(str, acts))}: not converted")
    norms = [m for m in tower.modules() if isinstance(m, nn.LayerNorm)]
    eps = {float(m.eps) for m in norms}
    if len(eps) > 1 or any(not m.elementwise_affine for m in norms):
        raise UnsupportedModelError(
            f"open_clip tower LayerNorms differ (eps {sorted(eps)} / affine): only one affine LayerNorm is converted"
        )
    pre = dict(getattr(tower, "preprocess_cfg", None) or {})
    return _Tower(
        image_size=_pair(tower.image_size),
        heads=int(blocks[0].attn.num_heads),
        act=acts.pop() if acts else None,
        eps=eps.pop(),
        layer_scale=not isinstance(blocks[0].ls_1, nn.Identity),
        mean=tuple(float(v) for v in pre.get("mean", getattr(tower, "image_mean", None) or OPENAI_MEAN)),
        std=tuple(float(v) for v in pre.get("std", getattr(tower, "image_std", None) or OPENAI_STD)),
        interpolation=str(pre.get("interpolation", "bicubic")),
    )


def _tower_from_config(config: dict[str, Any]) -> _Tower:
    """An open_clip model config (``open_clip.get_model_config(name)``, or ``open_clip_config.json`` with its
    ``model_cfg`` / ``preprocess_cfg``)."""
    pre = dict(config.get("preprocess_cfg") or {})
    cfg = config.get("model_cfg", config)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("vision_cfg"), dict):
        raise ConfigError("config= must be an open_clip model config with a 'vision_cfg' mapping")
    vc = cfg["vision_cfg"]
    if vc.get("timm_model_name"):
        raise UnsupportedModelError(
            f"open_clip tower is a timm trunk (timm_model_name={vc['timm_model_name']!r}): load it with vitkit.load"
        )
    if isinstance(vc.get("layers", 12), list | tuple):
        raise UnsupportedModelError("open_clip tower is a ModifiedResNet (layers is a list): only ViT towers convert")
    for key, default in _REFUSED_IF_SET.items():
        if vc.get(key, default) not in (default, None, False):
            raise UnsupportedModelError(f"open_clip tower sets {key}={vc[key]!r}: not converted")
    if vc.get("block_type") not in (None, "default"):
        raise UnsupportedModelError(f"open_clip tower sets block_type={vc['block_type']!r}: not converted")
    if vc.get("pool_type", "tok") != "tok":
        raise UnsupportedModelError(
            f"open_clip tower has pool_type={vc['pool_type']!r}: only 'tok' (class-token pooling) is converted"
        )
    unknown = sorted(k for k in vc if k not in _HARMLESS_KEYS and k not in _REFUSED_IF_SET and vc[k])
    if unknown:
        raise UnsupportedModelError(f"open_clip tower sets {unknown[0]}={vc[unknown[0]]!r}, unknown to vitkit")
    act_kwargs = dict(vc.get("act_kwargs") or {})
    approximate = act_kwargs.pop("approximate", "none")
    if act_kwargs or approximate not in ("none", "tanh") or (cfg.get("quick_gelu") and approximate != "none"):
        raise UnsupportedModelError(f"open_clip tower act_kwargs={vc.get('act_kwargs')!r} is not converted")
    norm_kwargs = dict(vc.get("norm_kwargs") or {})
    eps = float(norm_kwargs.pop("eps", TIMM_EPS))
    if norm_kwargs:
        raise UnsupportedModelError(f"open_clip tower norm_kwargs={vc['norm_kwargs']!r}: only eps is converted")
    width, head_width = int(vc.get("width", 768)), int(vc.get("head_width", 64))
    return _Tower(
        image_size=_pair(vc.get("image_size", 224)),
        heads=width // head_width,
        act="quick_gelu" if cfg.get("quick_gelu") else ("gelu_tanh" if approximate == "tanh" else None),
        eps=eps,
        layer_scale=vc.get("ls_init_value") is not None,
        mean=tuple(float(v) for v in pre.get("mean", OPENAI_MEAN)),
        std=tuple(float(v) for v in pre.get("std", OPENAI_STD)),
        interpolation=str(pre.get("interpolation", "bicubic")),
    )


def _tower_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image tower's tensors: a whole CLIP state dict (``visual.*`` keys) or the tower's own."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("visual.") for k in state):
        state = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    if "conv1.weight" not in state or "proj" not in state:
        raise CheckpointError(
            "state dict is not an open_clip ViT image tower (no conv1.weight / proj): pass the CLIP or visual state"
        )
    return {k: v.detach().float().cpu() for k, v in state.items()}


# -- the conversion ---------------------------------------------------------------------------------------------
_BLOCK_KEYS = {
    "ln_1": "norm1",
    "ln_2": "norm2",
    "attn.in_proj_weight": "attn.qkv.weight",
    "attn.in_proj_bias": "attn.qkv.bias",
    "attn.out_proj": "attn.proj",
    "ls_1.gamma": "ls1.gamma",
    "ls_2.gamma": "ls2.gamma",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def timm_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip tower keys → timm ViT keys (``proj`` [width, D] becomes ``head.weight`` [D, width], bias 0)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k == "conv1.weight":
            out["patch_embed.proj.weight"] = v
        elif k == "class_embedding":
            out["cls_token"] = v.reshape(1, 1, -1)  # [width] → [1, 1, width]
        elif k == "positional_embedding":
            out["pos_embed"] = v.unsqueeze(0)  # [1 + grid², width] → [1, 1 + grid², width]
        elif k.startswith("ln_pre."):
            out["norm_pre." + k.removeprefix("ln_pre.")] = v
        elif k.startswith("ln_post."):
            out["norm." + k.removeprefix("ln_post.")] = v
        elif k == "proj":
            out["head.weight"] = v.t().contiguous()  # x @ proj == x @ head.weight.T
            out["head.bias"] = torch.zeros(v.shape[1], dtype=v.dtype)
        elif k.startswith("transformer.resblocks."):
            i, rest = k.removeprefix("transformer.resblocks.").split(".", 1)
            for src, dst in _BLOCK_KEYS.items():
                if rest == src or rest.startswith(src + "."):
                    out[f"blocks.{i}.{dst}{rest[len(src) :]}"] = v
                    break
            else:
                raise UnsupportedModelError(f"open_clip tower key {k!r} has no timm counterpart: not converted")
        else:
            raise UnsupportedModelError(f"open_clip tower key {k!r} has no timm counterpart: not converted")
    return out


def _timm_kwargs(tower: _Tower, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    width, _, ph, pw = state["conv1.weight"].shape  # [width, 3, ph, pw]
    depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("transformer.resblocks."))
    hidden = int(state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0])
    mlp_ratio = hidden / width
    if int(width * mlp_ratio) != hidden:  # timm sizes the MLP as int(width * mlp_ratio)
        mlp_ratio = (hidden + 0.5) / width
    h, w = tower.image_size
    embed_dim = int(state["proj"].shape[1])
    kwargs: dict[str, Any] = {
        "img_size": [h, w],
        "patch_size": int(ph) if ph == pw else [int(ph), int(pw)],
        "embed_dim": int(width),
        "depth": depth,
        "num_heads": tower.heads,
        "mlp_ratio": mlp_ratio,
        "num_classes": embed_dim,
        "global_pool": "token",
        "class_token": True,
        "pre_norm": True,
        "pretrained_cfg_overlay": {
            "mean": list(tower.mean),
            "std": list(tower.std),
            "interpolation": tower.interpolation,
            "crop_pct": 1.0,
            "input_size": [3, h, w],
            "num_classes": embed_dim,
        },
    }
    if tower.act is not None:
        kwargs["act_layer"] = tower.act
    if tower.layer_scale:
        kwargs["init_values"] = 1.0  # the real gammas come with the weights
    if tower.eps != TIMM_EPS:
        kwargs["vitkit_norm_eps"] = tower.eps
    return kwargs


def from_open_clip(obj: Any, *, config: dict[str, Any] | None = None) -> nn.Module:
    """A timm ViT computing ``clip.encode_image`` (unnormalised) from an open_clip CLIP model, its ``.visual``
    tower, or a state dict (CLIP's or the tower's) plus ``config`` (the open_clip model config dict).

    Raises ``UnsupportedModelError`` naming the feature for towers it cannot reproduce exactly (attentional
    pooler, ``pool_type`` other than ``tok``, ``no_ln_pre``, ``final_ln_after_pool``, ``output_tokens``, custom
    attention blocks, ModifiedResNet / timm trunks). Patch dropout is a training-time op and is dropped.
    """
    if config is not None:
        if not isinstance(obj, dict):
            raise ConfigError("config= goes with a state dict: from_open_clip(state_dict, config=model_cfg)")
        tower, state = _tower_from_config(config), _tower_state(obj)
    elif isinstance(obj, nn.Module):
        module = obj.visual if isinstance(getattr(obj, "visual", None), nn.Module) else obj
        tower, state = _tower_from_module(module), _tower_state(module.state_dict())
    elif isinstance(obj, dict):
        raise ConfigError(
            "a state dict needs config=: from_open_clip(state_dict, config=open_clip.get_model_config(name))"
        )
    else:
        raise ConfigError(f"from_open_clip takes an open_clip CLIP model, its .visual or a state dict, got {obj!r}")
    kwargs = _timm_kwargs(tower, state)
    model = build_arch(TIMM_ARCH, kwargs)
    if tower.eps != TIMM_EPS:  # build_arch without the vitkit_norm_eps option: refuse rather than drift
        bad = [m.eps for m in model.modules() if isinstance(m, nn.LayerNorm) and m.eps != tower.eps]
        if bad:
            raise UnsupportedModelError(f"open_clip tower LayerNorm eps {tower.eps} could not be reproduced")
    load_state_dict_strict(model, timm_state(state), source="open_clip image tower")
    return model.eval()


# -- loading by name --------------------------------------------------------------------------------------------
def _open_clip():
    try:
        import open_clip
    except ImportError:
        raise ConfigError("open_clip: models need the optional open_clip package: pip install 'vitkit[clip]'") from None
    return open_clip


def parse_name(spec: str) -> tuple[str, str | None]:
    """``open_clip:ARCH`` / ``open_clip:ARCH/PRETRAINED`` (a tag or a local file) / ``open_clip:hf-hub:org/repo``."""
    name = spec.removeprefix(PREFIX)
    if name.startswith(("hf-hub:", "local-dir:")):
        return name, None
    arch, _, tag = name.partition("/")
    return arch, tag or None


def create_clip(spec: str, *, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """The open_clip CLIP model that ``spec`` (``open_clip:ARCH[/PRETRAINED]``) names, in eval mode."""
    oc = _open_clip()
    arch, tag = parse_name(spec)
    schema = arch.startswith(("hf-hub:", "local-dir:"))
    if not schema and arch not in oc.list_models():
        close = difflib.get_close_matches(arch, oc.list_models(), n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown open_clip model {arch!r}: see open_clip.list_models(){hint}")
    tags = [] if schema else oc.list_pretrained_tags_by_model(arch)
    if tag is not None and tag not in tags and not Path(tag).expanduser().is_file():
        raise ConfigError(f"{spec!r}: {tag!r} is neither a pretrained tag of {arch} ({', '.join(tags)}) nor a file")
    if pretrained and tag is None and not schema:
        raise ConfigError(f"name the weights: vitkit.load('{PREFIX}{arch}/TAG') with TAG one of {', '.join(tags)}")
    if tag in tags and (oc.get_pretrained_cfg(arch, tag) or {}).get("quick_gelu"):
        kwargs.setdefault("force_quick_gelu", True)  # the tag was trained with QuickGELU (e.g. OpenAI weights)
    weights = tag is not None or schema
    source = str(Path(tag).expanduser()) if tag and tag not in tags else tag  # a tag, or a local weights file
    try:
        clip = oc.create_model(arch, pretrained=source, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"cannot build {spec!r} with {sorted(kwargs)}: {exc}") from None
    except Exception as exc:  # downloads fail as RuntimeError / OSError / huggingface_hub errors
        if not weights:
            raise
        raise CheckpointError(
            f"could not download pretrained weights for {spec!r} ({type(exc).__name__}; offline?): pass a local "
            f"checkpoint instead, e.g. vitkit.load('{PREFIX}{arch}//path/to/open_clip_model.safetensors')"
        ) from None
    if not weights:
        _log.info("%s: random init (name the weights as %s%s/TAG)", spec, PREFIX, arch)
    return clip.eval()


def load_open_clip(spec: str, *, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """``vitkit.load("open_clip:ARCH[/PRETRAINED]")``: the converted image tower (outputs the image embedding)."""
    model = from_open_clip(create_clip(spec, pretrained=pretrained, **kwargs))
    getattr(model, ARCH_ATTR)["source"] = {"open_clip": spec.removeprefix(PREFIX)}
    return model


# -- zero-shot class embeddings ---------------------------------------------------------------------------------
def _default_tokenizer(clip: nn.Module) -> Callable:
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=int(getattr(clip, "context_length", 77)))


@torch.inference_mode()
def text_embeddings(
    clip_model: nn.Module,
    classnames: Sequence[str],
    templates: Sequence[str | Callable[[str], str]] = DEFAULT_TEMPLATES,
    tokenizer: Callable | None = None,
) -> torch.Tensor:
    """Class-prompt embeddings ``[C, D]`` (unit rows), as open_clip's zero-shot classifier builds them: each
    class's prompts (``template.format(name)`` or ``template(name)``) encoded, normalised, averaged, normalised.
    ``tokenizer`` defaults to open_clip's BPE tokenizer at the model's context length."""
    if not classnames or not templates:
        raise ConfigError("text_embeddings needs at least one class name and one template like 'a photo of a {}.'")
    tokenizer = tokenizer or _default_tokenizer(clip_model)
    clip_model.eval()
    rows = []
    for name in classnames:
        texts = [t.format(name) if isinstance(t, str) else t(name) for t in templates]
        e = F.normalize(clip_model.encode_text(tokenizer(texts)).float(), dim=-1)  # [T, D]
        rows.append(F.normalize(e.mean(0), dim=-1))
    return torch.stack(rows)  # [C, D]


def write_class_embeddings(
    path: str | Path,
    clip_model: nn.Module | str,
    classnames: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    tokenizer: Callable | None = None,
) -> Path:
    """Write the class-prompt embedding file for ``vitkit eval MODEL --zero-shot FILE`` (recipes: ``eval:
    {zero_shot: FILE}``). ``clip_model``: an open_clip CLIP model or an ``open_clip:ARCH/PRETRAINED`` name."""
    from .zero_shot import save_class_embeddings

    source = None
    if isinstance(clip_model, str):
        source = clip_model.removeprefix(PREFIX)
        if tokenizer is None:
            arch, _ = parse_name(clip_model)
            tokenizer = _open_clip().get_tokenizer(arch)
        clip_model = create_clip(PREFIX + source)
    emb = text_embeddings(clip_model, classnames, templates, tokenizer)
    names = [t if isinstance(t, str) else getattr(t, "__name__", repr(t)) for t in templates]
    meta = {"templates": names} | ({"open_clip": source} if source else {})
    return save_class_embeddings(path, emb, classnames, meta=meta)


NAME_LOADERS[PREFIX] = load_open_clip  # vitkit.load("open_clip:ARCH/TAG")
