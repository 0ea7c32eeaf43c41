"""``vitkit.load``: one verb for a timm name or Hub name, a preset, a ``.safetensors``/``.pth`` file, an artifact dir
or a ``transformers`` ``save_pretrained`` folder.

Every model vitkit builds remembers how it was built (``model.vitkit_arch = {"name", "kwargs"}``) so that
artifacts can rebuild it before loading weights strictly. ``kwargs`` may hold vitkit-level options that timm does
not know (:data:`VITKIT_KWARGS`); :func:`build_arch` applies them after ``timm.create_model``.
"""

from __future__ import annotations

import copy
import difflib
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import CheckpointError, ConfigError
from .presets import PRESETS

_log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
ARCH_ATTR = "vitkit_arch"
#: vitkit-level build options kept in the arch record and applied after ``timm.create_model``:
#: ``vitkit_norm_eps`` sets the eps of every ``nn.LayerNorm`` (timm's ViT hard-codes 1e-6; HF ViT uses 1e-12).
VITKIT_KWARGS = ("vitkit_norm_eps",)
#: Hugging Face Hub names timm resolves: ``hf-hub:org/name`` (``hf_hub:`` too) and ``timm/name``.
_HUB_RE = re.compile(r"^(?:hf[-_]hub:(?P<repo>[\w.\-]+/[\w.\-]+(?:@[\w.\-/]+)?)|(?P<timm>timm/[\w.\-]+))$")
#: pretrained_cfg fields of a Hub config worth keeping in the record (data config and the defaults timm derives).
_HUB_CFG_FIELDS = ("input_size", "fixed_input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")
_HUB_CFG_FIELDS += ("num_classes",)


def hub_repo_id(name: str) -> str | None:
    """``org/name`` for a Hugging Face Hub model name (``hf-hub:org/name``, ``timm/name``), else None."""
    m = _HUB_RE.match(name)
    if m is None:
        return None
    return m.group("repo") or m.group("timm")


def arch_record(model: nn.Module) -> dict[str, Any]:
    """``{"name", "kwargs"}`` that rebuilds ``model``'s architecture (best effort for foreign timm models)."""
    rec = getattr(model, ARCH_ATTR, None)
    if rec is not None:
        return copy.deepcopy(rec)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("architecture")
    if not name:
        raise ConfigError(
            f"cannot tell how to rebuild this {type(model).__name__}: load it with vitkit.load(...) first"
        )
    kwargs: dict[str, Any] = {}
    if getattr(model, "num_classes", None) is not None:
        kwargs["num_classes"] = int(model.num_classes)
    pe = getattr(model, "patch_embed", None)
    if pe is not None and hasattr(pe, "img_size"):
        kwargs["img_size"] = list(pe.img_size)
    return {"name": name, "kwargs": kwargs}


def _yaml_plain(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _yaml_plain(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_yaml_plain(v) for v in value)
    return value is None or isinstance(value, str | int | float | bool)


def check_plain_record(rec: dict[str, Any]) -> None:
    """Refuse an arch record that YAML cannot hold (a class or partial passed as a timm kwarg): artifacts rebuild
    the model from it, so every kwarg must be str/int/float/bool/list/dict."""
    for key, value in (rec.get("kwargs") or {}).items():
        if not _yaml_plain(value):
            hint = f"{key}={value.__name__.lower()!r}" if isinstance(value, type) else f"{key}='<name>'"
            raise ConfigError(
                f"model {rec.get('name')!r} was built with {key}={value!r}, which an artifact cannot record: "
                f"pass the string name timm resolves instead (e.g. {hint}) to vitkit.load"
            )


def build_arch(name: str, kwargs: dict[str, Any] | None = None, *, pretrained: bool = False) -> nn.Module:
    """Create a timm model (or preset) with random init unless ``pretrained``; records how it was built."""
    import timm

    kwargs = dict(kwargs or {})
    record_name, record_kwargs = name, copy.deepcopy(kwargs)
    vitkit_opts = {k: kwargs.pop(k) for k in VITKIT_KWARGS if k in kwargs}
    _check_vitkit_opts(vitkit_opts)
    repo = hub_repo_id(name)
    if repo is not None:
        return _build_hub(name, repo, kwargs, vitkit_opts, pretrained=pretrained)
    if name in PRESETS:
        preset = PRESETS[name]
        merged = copy.deepcopy(preset["kwargs"])
        merged.update(kwargs)
        vitkit_opts = {**{k: merged.pop(k) for k in VITKIT_KWARGS if k in merged}, **vitkit_opts}
        arch, kwargs = preset["arch"], merged
        if pretrained:
            raise ConfigError(f"preset {name!r} has no pretrained weights: train it with `vitkit train` first")
    else:
        arch = name
        if not timm.is_model(arch):
            close = difflib.get_close_matches(arch, timm.list_models() + list(PRESETS), n=4, cutoff=0.6)
            fix = "; use a timm name (timm.list_models()) or a preset (vitkit list)"
            hint = f"; did you mean {', '.join(close)}?" if close else fix
            raise ConfigError(f"unknown model {name!r}: not a timm model name, preset or existing file{hint}")
    model = _create(arch, name, kwargs, pretrained=pretrained, hub=False)
    _apply_vitkit_opts(model, vitkit_opts)
    model.eval()
    setattr(model, ARCH_ATTR, {"name": record_name, "kwargs": record_kwargs})
    return model


def _create(arch: str, name: str, kwargs: dict[str, Any], *, pretrained: bool, hub: bool) -> nn.Module:
    """``timm.create_model`` with vitkit's one-line errors (a Hub name needs the network even without weights)."""
    import timm

    if "pretrained_cfg_overlay" in kwargs and isinstance(kwargs["pretrained_cfg_overlay"], dict):
        kwargs["pretrained_cfg_overlay"] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in kwargs["pretrained_cfg_overlay"].items()
        }
    try:
        return timm.create_model(arch, pretrained=pretrained, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"cannot build {name!r} with {sorted(kwargs)}: {exc}") from None
    except Exception as exc:  # network failures surface as OSError / huggingface_hub errors
        if pretrained or hub:
            what = "pretrained weights" if pretrained else "the Hub config"
            raise CheckpointError(
                f"could not download {what} for {name!r} ({type(exc).__name__}; offline?): "
                f"pass a local checkpoint instead, e.g. vitkit.load('weights.safetensors', arch={name!r})"
            ) from None
        if isinstance(exc, AssertionError | ValueError | KeyError | NotImplementedError):  # timm's kwarg checks
            shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "no kwargs"
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"cannot build {name!r} with {shown}: {reason}; fix the arch kwargs (--arch / arch=)"
            ) from None
        raise


def _check_vitkit_opts(opts: dict[str, Any]) -> None:
    eps = opts.get("vitkit_norm_eps")
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1):
        raise ConfigError(f"vitkit_norm_eps must be a float in (0, 1), got {eps!r}: e.g. 1e-12 for a HF ViT")


def _apply_vitkit_opts(model: nn.Module, opts: dict[str, Any]) -> None:
    _check_vitkit_opts(opts)
    eps = opts.get("vitkit_norm_eps")
    if eps is None:
        return
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.eps = float(eps)


def _build_hub(name: str, repo: str, kwargs: dict[str, Any], opts: dict[str, Any], *, pretrained: bool) -> nn.Module:
    """Build ``hf-hub:org/name`` / ``timm/name`` through timm; the record names the resolved timm architecture
    with the Hub's model args and data config, so an artifact rebuilds it offline."""
    model = _create(f"hf-hub:{repo}", name, dict(kwargs), pretrained=pretrained, hub=True)
    _apply_vitkit_opts(model, opts)
    model.eval()
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    model_args = dict(getattr(model, "pretrained_model_args", None) or {})  # the Hub config's model_args
    rec_kwargs: dict[str, Any] = {**copy.deepcopy(model_args), **copy.deepcopy(kwargs), **opts}
    overlay = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items() if k in _HUB_CFG_FIELDS}
    if overlay:
        rec_kwargs["pretrained_cfg_overlay"] = {**overlay, **dict(rec_kwargs.get("pretrained_cfg_overlay") or {})}
    arch = cfg.get("architecture") or repo.rsplit("/", 1)[-1]
    setattr(model, ARCH_ATTR, {"name": arch, "kwargs": rec_kwargs, "hub": f"hf-hub:{repo}"})
    return model


def _parse_arch(arch: str | dict | None) -> tuple[str, dict[str, Any]]:
    if arch is None:
        raise ConfigError(
            "a checkpoint file needs arch=: e.g. vitkit.load('w.safetensors', arch='deit_small_patch16_224')"
        )
    if isinstance(arch, str):
        return arch, {}
    if isinstance(arch, dict) and "name" in arch:
        unknown = set(arch) - {"name", "kwargs"}
        if unknown:
            raise ConfigError(f"arch has unknown keys {sorted(unknown)}; valid: ['name', 'kwargs']")
        return str(arch["name"]), dict(arch.get("kwargs") or {})
    raise ConfigError(f"arch must be a timm name or {{'name': ..., 'kwargs': {{...}}}}, got {arch!r}")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely: safetensors, or ``torch.load(weights_only=True)`` for .pth/.pt/.bin."""
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint file not found: {path}: check the path (relative paths start at the current directory)"
        )
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): re-save or re-download it")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"corrupt or truncated safetensors file {path} ({exc}): re-download it or re-save the weights"
            ) from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path} holds pickled Python objects that weights_only=True refuses to load; if you trust it, "
                "re-save its state_dict with torch.save(model.state_dict(), ...) or as .safetensors"
            ) from None
        raise CheckpointError(f"cannot read checkpoint {path}: {msg}") from None
    for key in ("state_dict", "model", "model_state", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def state_mismatch(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], ignore=()) -> str:
    """The first differences between ``state`` and the expected key → shape map, as one phrase ('' when none):
    shape mismatches, missing keys, unexpected keys (those in ``ignore`` are not counted as unexpected)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and k not in ignore]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v)
    ]
    parts = []
    if shapes:
        parts.append(f"shape mismatch {shapes[:3]}")
    if missing:
        parts.append(f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''} ({len(missing)} keys)")
    if unexpected:
        parts.append(f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''} ({len(unexpected)} keys)")
    return "; ".join(parts)


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], *, source: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the first mismatching keys."""
    problem = state_mismatch(state, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    if problem:
        raise CheckpointError(
            f"{source} does not fit the architecture: {problem}; "
            "check arch= and its kwargs (num_classes, img_size, ...)"
        )
    model.load_state_dict(state, strict=True)


#: How a directory is loaded: :mod:`vitkit.artifact` registers ``load_artifact`` here on import, so this layer
#: never imports the artifact layer above it.
DIRECTORY_LOADERS: list[Callable[[Path], nn.Module]] = []
#: Foreign model folders, tried before :data:`DIRECTORY_LOADERS`: ``(accepts(path), load(path, **kwargs))`` pairs.
#: :mod:`vitkit.models.hf` registers the ``transformers`` folder reader here on import (it imports this module).
FOLDER_LOADERS: list[tuple[Callable[[Path], bool], Callable[..., nn.Module]]] = []
#: ``vitkit.load("<prefix>...")`` by name prefix (``open_clip:``): registered by their modules on import.
NAME_LOADERS: dict[str, Callable[..., nn.Module]] = {}


def load(spec: str | Path, *, arch: str | dict | None = None, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Load a ViT.

    * a timm model name or vitkit preset (``"deit_small_patch16_224"``, ``"vitkit_mnist_tiny"``): random
      init unless ``pretrained=True`` (downloads; offline it fails telling you to pass a local file);
      ``kwargs`` go to ``timm.create_model``;
    * a ``.safetensors`` / ``.pth`` / ``.pt`` file plus ``arch=`` (timm name, or ``{"name", "kwargs"}``);
      ``.pth`` is always read with ``weights_only=True``;
    * a vitkit artifact directory (``model.safetensors`` + ``recipe.resolved.yaml``);
    * a ``transformers`` ``save_pretrained`` folder (``config.json`` with ``model_type``): converted exactly into
      the matching timm model (:mod:`vitkit.models.hf`);
    * a Hugging Face Hub name ``hf-hub:org/name`` or ``timm/name`` (timm fetches its config, and its weights
      when ``pretrained=True``).
    """
    if isinstance(spec, nn.Module):
        return spec
    text = str(spec)
    for prefix, name_loader in NAME_LOADERS.items():  # e.g. "open_clip:ARCH/TAG" (vitkit.models.open_clip)
        if text.startswith(prefix):
            return name_loader(text, pretrained=pretrained, **kwargs)
    path = Path(text).expanduser()
    if path.is_dir():
        for accepts, loader in FOLDER_LOADERS:
            if accepts(path):
                if arch is not None:
                    raise ConfigError(f"{path} is a model folder whose config.json sets the architecture: drop arch=")
                return loader(path, **kwargs)
        if not DIRECTORY_LOADERS:
            raise CheckpointError(f"{path} is a directory: import vitkit (which can read artifact directories) first")
        return DIRECTORY_LOADERS[-1](path)
    if not path.exists() and hub_repo_id(text) is not None:
        return build_arch(text, kwargs, pretrained=pretrained)
    if path.suffix in CHECKPOINT_SUFFIXES or "/" in text or path.exists():
        if not path.exists():
            if path.suffix in CHECKPOINT_SUFFIXES:
                raise CheckpointError(
                    f"file not found: {path}: check the path (relative paths start at the current directory)"
                )
            raise ConfigError(
                f"{text!r} is not a file or folder; for a Hugging Face Hub model use hf-hub:org/name, "
                "or save_pretrained it and pass the folder"
            )
        name, arch_kwargs = _parse_arch(arch)
        arch_kwargs.update(kwargs)
        model = build_arch(name, arch_kwargs)
        load_state_dict_strict(model, read_state_dict(path), source=str(path))
        return model
    return build_arch(text, kwargs, pretrained=pretrained)
