"""Read a ``transformers`` ``save_pretrained`` folder and build the exact timm model it holds.

A folder is ``config.json`` (with ``model_type``) plus weights: ``model.safetensors``, or a sharded
``model.safetensors.index.json`` + shards, or (legacy) ``pytorch_model.bin`` / its sharded index, read with
``torch.load(weights_only=True)``. No ``transformers`` import: the converters work on plain dicts.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ...errors import CheckpointError, ConfigError
from ..load import ARCH_ATTR, FOLDER_LOADERS, build_arch, load_state_dict_strict, read_state_dict
from .registry import StateDict, converter_for, supported_model_types

_log = logging.getLogger(__name__)
#: ``hook(model, config)`` run on every loaded folder's model (vitkit.interop re-applies recorded runtime steps)
LOAD_HOOKS: list = []

CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
ARTIFACT_RECIPE = "recipe.resolved.yaml"  # a vitkit artifact may hold a config.json too (an HF export): not ours
_WEIGHTS = (
    ("model.safetensors", False),
    ("model.safetensors.index.json", True),
    ("pytorch_model.bin", False),
    ("pytorch_model.bin.index.json", True),
)
#: PIL resample codes in ``preprocessor_config.json`` → timm interpolation names.
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def is_hf_folder(path: str | Path) -> bool:
    """A directory with a ``config.json`` and no vitkit ``recipe.resolved.yaml``."""
    path = Path(path)
    return path.is_dir() and (path / CONFIG).is_file() and not (path / ARTIFACT_RECIPE).is_file()


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path / CONFIG}: {exc}; re-save the folder with save_pretrained") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path / CONFIG} is not a JSON object: re-save the folder with save_pretrained")
    if not config.get("model_type"):
        hint = ""
        if config.get("architecture"):  # a timm hub folder
            hint = f" (a timm folder? load its weights with arch={config['architecture']!r})"
        raise CheckpointError(
            f"{path / CONFIG} has no model_type: not a transformers save_pretrained folder{hint}; "
            f"supported model types: {', '.join(supported_model_types())}"
        )
    return config


def _read_bin(file: Path) -> StateDict:
    if not file.is_file():
        raise CheckpointError(f"weights file not found: {file}")
    try:
        obj = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{file} holds pickled Python objects that torch.load(weights_only=True) refuses; if you trust it, "
                "convert it: load the folder with transformers and save_pretrained(..., safe_serialization=True)"
            ) from None
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"cannot read {file}: {msg}; re-save the folder with save_pretrained") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{file} is not a state dict of tensors: re-save the folder with save_pretrained")
    return obj


def _read_file(file: Path) -> StateDict:
    if file.suffix == ".safetensors":
        if not file.is_file():
            raise CheckpointError(f"weights file not found: {file}")
        return read_state_dict(file)
    return _read_bin(file)


def _read_sharded(index: Path) -> StateDict:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"cannot read the shard index {index}: {exc}; re-save with save_pretrained") from None
    shards = list(dict.fromkeys(weight_map.values()))
    for shard in shards:
        if not (index.parent / shard).is_file():
            raise CheckpointError(
                f"shard {shard} listed in {index.name} is missing from {index.parent}: download or copy every shard"
            )
    state: StateDict = {}
    for shard in shards:
        part = _read_file(index.parent / shard)
        wanted = [k for k, s in weight_map.items() if s == shard]
        lost = [k for k in wanted if k not in part]
        if lost:
            raise CheckpointError(f"shard {shard} lacks {lost[:3]} listed in {index.name}: re-download that shard")
        state.update({k: part[k] for k in wanted})
    return state


def read_weights(path: Path) -> StateDict:
    """The folder's state dict (transformers' on-disk key names)."""
    for name, sharded in _WEIGHTS:
        file = path / name
        if file.is_file():
            return _read_sharded(file) if sharded else _read_file(file)
    raise CheckpointError(
        f"{path} has a config.json but no weights ({', '.join(n for n, _ in _WEIGHTS)}): copy the weights next to it"
    )


def read_hf_folder(path: str | Path) -> tuple[dict[str, Any], StateDict]:
    """``(config, state)`` of a ``transformers`` folder; raises ``CheckpointError`` for unknown model types."""
    path = Path(path)
    config = _read_config(path)
    if converter_for(config["model_type"]) is None:
        raise CheckpointError(
            f"{path}: model_type {config['model_type']!r} has no vitkit converter; "
            f"supported model types: {', '.join(supported_model_types())}"
        )
    return config, read_weights(path)


def _data_overlay(path: Path, kwargs: dict[str, Any]) -> dict[str, Any]:
    """timm ``pretrained_cfg`` fields (input size, mean/std, interpolation, crop) from the folder's preprocessor."""
    img = kwargs.get("img_size")
    overlay: dict[str, Any] = {}
    if isinstance(img, list):
        overlay["input_size"] = [int(kwargs.get("in_chans", 3)), *img]
    try:
        pre = json.loads((path / PREPROCESSOR).read_text()) if (path / PREPROCESSOR).is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        _log.warning("ignoring unreadable %s", path / PREPROCESSOR)
        pre = {}
    if isinstance(pre.get("image_mean"), list) and isinstance(pre.get("image_std"), list):
        overlay["mean"], overlay["std"] = [float(x) for x in pre["image_mean"]], [float(x) for x in pre["image_std"]]
    if pre.get("resample") in _RESAMPLE:
        overlay["interpolation"] = _RESAMPLE[pre["resample"]]
    size, crop = pre.get("size") or {}, pre.get("crop_size") or {}
    if pre.get("do_center_crop") and isinstance(size, dict) and size.get("shortest_edge") and crop.get("height"):
        overlay["crop_pct"] = float(crop["height"]) / float(size["shortest_edge"])
    elif pre:
        overlay["crop_pct"] = 1.0
    return overlay


#: model types whose position embeddings :func:`resize_pos_embed` resamples exactly as transformers does
_RESIZABLE = ("vit", "deit", "dinov2")


def resize_pos_embed(state: StateDict, kwargs: dict[str, Any], img_size: int | list[int]) -> None:
    """Resample a timm ViT's ``pos_embed`` (in place, ``kwargs["img_size"]`` too) to ``img_size`` with the formula
    transformers' ViT/DeiT/DINOv2 ``interpolate_pos_encoding`` applies at run time (bicubic, no antialias, fp32),
    so the timm model at ``img_size`` equals transformers fed ``img_size`` images (ViT/DeiT: with
    ``interpolate_pos_encoding=True``; DINOv2 always interpolates)."""
    side = [int(img_size)] * 2 if isinstance(img_size, int) else [int(v) for v in img_size]
    patch = state["patch_embed.proj.weight"].shape[-2:]
    pos = state["pos_embed"]  # [1, prefix + g*g, dim]
    prefix = 1 + int("dist_token" in state)
    n, dim = pos.shape[1] - prefix, pos.shape[2]
    g = int(round(n**0.5))
    if g * g != n:
        raise ConfigError(f"img_size= needs a square grid of position embeddings, this model has {n}")
    grid = pos[:, prefix:].reshape(1, g, g, dim).permute(0, 3, 1, 2)  # [1, dim, g, g]
    new = torch.nn.functional.interpolate(
        grid.float(), size=(side[0] // patch[0], side[1] // patch[1]), mode="bicubic", align_corners=False
    ).to(pos.dtype)
    state["pos_embed"] = torch.cat([pos[:, :prefix], new.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)
    kwargs["img_size"] = side


def load_hf_folder(path: str | Path, *, img_size: int | list[int] | None = None, **unknown: Any) -> nn.Module:
    """The exact timm model of a ``transformers`` folder.

    ``img_size``: build it for another input size (ViT/DeiT/DINOv2), position embeddings resampled as transformers
    does at run time (see :func:`resize_pos_embed`). Its arch record keeps the source:
    ``model.vitkit_arch["hf"] = {"model_type", "config"}``."""
    path = Path(path)
    if unknown:
        raise ConfigError(
            f"{path} is a transformers folder: its config.json sets the architecture, so {sorted(unknown)} cannot "
            "be changed at load; only img_size= is accepted"
        )
    config, state = read_hf_folder(path)
    conv = converter_for(config["model_type"])
    assert conv is not None  # read_hf_folder checked
    try:
        name, kwargs, timm_state = conv.to_timm(config, state)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    kwargs = dict(kwargs)
    if img_size is not None:
        if config["model_type"] not in _RESIZABLE or "pos_embed" not in timm_state:
            raise ConfigError(f"img_size= is supported for {', '.join(_RESIZABLE)} folders, not {config['model_type']}")
        timm_state = dict(timm_state)
        resize_pos_embed(timm_state, kwargs, img_size)
    overlay = _data_overlay(path, kwargs)
    if overlay:
        kwargs["pretrained_cfg_overlay"] = {**overlay, **dict(kwargs.get("pretrained_cfg_overlay") or {})}
    model = build_arch(name, kwargs)
    load_state_dict_strict(model, timm_state, source=f"{path} (converted to {name})")
    getattr(model, ARCH_ATTR)["hf"] = {"model_type": config["model_type"], "config": config}
    _log.info("loaded %s folder %s as timm %s", config["model_type"], path, name)
    for hook in LOAD_HOOKS:
        hook(model, config)
    return model


FOLDER_LOADERS.append((is_hf_folder, load_hf_folder))  # vitkit.load(<transformers folder>) comes here
