"""LoRA weights in Hugging Face peft's on-disk format, for timm models, without depending on peft.

A peft LoRA directory holds ``adapter_model.safetensors`` with keys
``base_model.model.<module>.lora_A.weight`` ``[r, in]`` / ``...lora_B.weight`` ``[out, r]`` (+
``base_model.model.<module>.weight``/``bias`` for ``modules_to_save``, e.g. a retrained head) and
``adapter_config.json`` (``peft_type: "LORA"``, ``r``, ``lora_alpha``, ``target_modules``, ...). peft's
scale is ``lora_alpha / r`` (``lora_alpha / √r`` with ``use_rslora``), the same as :class:`LoRAConfig`.

We write full module names in ``target_modules`` (``blocks.0.attn.qkv``...), which peft matches exactly,
so a model loaded with ``PeftModel.from_pretrained(timm_model, dir)`` wraps the same layers (not
``patch_embed.proj`` nor the head). Reading accepts list or regex ``target_modules``, keys with or without
the adapter name (``lora_A.default.weight``); DoRA, ``fan_in_fan_out`` and per-module ranks are refused.

A PiSSA-started LoRA (``init='pissa'``) trained on the residual ``W_res = W0 − s·B0A0`` is written relative to
the original ``W0``, as peft converts PiSSA to LoRA: ``W_res + s·BA = W0 + s·[B, −B0][A; A0]``, a rank-2r
LoRA with the same scale (``lora_alpha = s·2r``), so it loads onto the untouched base model.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
import torch.nn as nn

from .._io import atomic_write_bytes, atomic_write_text
from ..adapt.common import head_param_names
from ..adapt.lora import LoRAConfig, lora_modules
from ..errors import CheckpointError, ConfigError

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
PREFIX = "base_model.model."


def export_peft(
    model: nn.Module, directory: str | Path, *, modules_to_save: list[str] | None = None, naming: str = "timm"
) -> Path:
    """Write the model's LoRA factors (and ``modules_to_save``, default: the classifier head(s) if they are
    trainable) as a peft LoRA directory. Files are written atomically. Returns the directory.

    ``naming="hf"``: module names of the ``transformers`` model this one converts to (for
    ``PeftModel.from_pretrained(<transformers model>, dir)``; see :func:`~vitkit.interop.hf_export.peft_hf_names`)."""
    from safetensors.torch import save

    mods = lora_modules(model)
    if not mods:
        raise ConfigError("model has no LoRA layers to export: add them with LoRAConfig first")
    ranks = {int(m.lora_A.shape[0]) for m in mods.values()}
    if any(m.lora_hadamard for m in mods.values()):
        raise ConfigError(
            "export_peft writes plain LoRA only; this model uses HiRA (variant='hira'): fold it with "
            "merge_back and ship the plain weights"
        )
    scales = {round(float(m.lora_scale), 12) for m in mods.values()}
    if len(ranks) != 1 or len(scales) != 1:
        raise ConfigError(f"export_peft needs one rank and scale for all layers, got ranks {sorted(ranks)}")
    r, scale = ranks.pop(), scales.pop()
    tensors = {}
    for name, m in mods.items():
        a, b = m.lora_A.detach(), m.lora_B.detach()
        if m.lora_init == "pissa":  # W_res + s·BA = W0 + s·(BA − B0A0): a rank-2r LoRA on the original W0
            a, b = torch.cat([a, m.lora_A0]), torch.cat([b, -m.lora_B0], dim=1)
        tensors[f"{PREFIX}{name}.lora_A.weight"] = a.cpu().contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = b.cpu().contiguous()
    if any(m.lora_init == "pissa" for m in mods.values()):
        r *= 2
    if modules_to_save is None:
        params = dict(model.named_parameters())
        modules_to_save = sorted(
            {n.rsplit(".", 1)[0] for n in head_param_names(model) if params[n].requires_grad}, key=len
        )
    modules = dict(model.named_modules())
    for mname in modules_to_save:
        if mname not in modules:
            raise ConfigError(f"modules_to_save names {mname!r}, which is not a module of the model")
        for pname, p in modules[mname].named_parameters(recurse=False):
            tensors[f"{PREFIX}{mname}.{pname}"] = p.detach().cpu().contiguous()
    dropout = next(iter(mods.values())).lora_dropout
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": _arch_name(model),
        "r": r,
        "lora_alpha": scale * r,
        "lora_dropout": float(getattr(dropout, "p", 0.0)),
        "target_modules": list(mods),
        "modules_to_save": list(modules_to_save) or None,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    if naming == "hf":
        from .hf_export import peft_hf_names

        tensors, config = peft_hf_names(model, tensors, config, PREFIX)
    elif naming != "timm":
        raise ConfigError(f"export_peft naming must be 'timm' or 'hf', got {naming!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(directory / WEIGHTS, save(tensors, metadata={"format": "pt"}))
    atomic_write_text(directory / CONFIG, json.dumps(config, indent=2) + "\n")
    return directory


def _arch_name(model: nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture")


def read_peft(directory: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(adapter_config, tensors)`` of a peft directory, checked to be a LoRA we can load."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / CONFIG).is_file() or not (directory / WEIGHTS).is_file():
        raise CheckpointError(f"{directory} is not a peft LoRA directory (needs {CONFIG} and {WEIGHTS})")
    try:
        config = json.loads((directory / CONFIG).read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{directory / CONFIG} is not valid JSON: {exc}") from None
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise CheckpointError(f"{directory} holds a {config.get('peft_type')} adapter; only LORA is supported")
    for flag, why in (("use_dora", "DoRA"), ("fan_in_fan_out", "fan_in_fan_out (Conv1D) weights")):
        if config.get(flag):
            raise CheckpointError(f"{directory}: {why} is not supported; export a plain LoRA")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise CheckpointError(f"{directory}: per-module rank_pattern/alpha_pattern is not supported")
    try:
        tensors = load_file(str(directory / WEIGHTS))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"cannot read {directory / WEIGHTS}: {exc}") from None
    return config, tensors


_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


def import_peft(model: nn.Module, directory: str | Path) -> nn.Module:
    """Add the LoRA layers of a peft directory to ``model`` (a timm ViT without adapters), in place.

    Injected through ``vitkit.apply_`` (a recorded ``lora`` step, so artifacts replay it), then the factors
    and any ``modules_to_save`` weights are copied in. Returns ``model``.
    """
    from ..api import apply_

    config, tensors = read_peft(directory)
    factors: dict[str, dict[str, torch.Tensor]] = {}
    extra: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        m = _LORA_KEY.match(key)
        if m:
            factors.setdefault(m["module"], {})[m["which"]] = t
        else:
            extra[key[len(PREFIX) :] if key.startswith(PREFIX) else key] = t
    if not factors:
        raise CheckpointError(f"{directory / WEIGHTS} holds no lora_A/lora_B weights")
    incomplete = sorted(n for n, f in factors.items() if set(f) != {"A", "B"})
    if incomplete:
        raise CheckpointError(f"{directory}: modules {incomplete[:3]} have only one of lora_A / lora_B")
    ranks = {int(f["A"].shape[0]) for f in factors.values()}
    if len(ranks) != 1:
        raise CheckpointError(f"{directory}: layers have different ranks {sorted(ranks)}; not supported")
    r = ranks.pop()
    if int(config.get("r", r)) != r:
        raise CheckpointError(f"{directory}: adapter_config r={config.get('r')} but the weights have rank {r}")
    alpha = float(config.get("lora_alpha", 8))
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    names = sorted(factors, key=_module_order(model))
    _check_targets(config.get("target_modules"), names, directory)
    modules = dict(model.named_modules())
    missing = [n for n in names if not isinstance(modules.get(n), nn.Linear)]
    if missing:
        raise CheckpointError(f"{directory}: LoRA targets {missing[:3]} are not nn.Linear layers of this model")
    head_ok = {n for n in extra if n.rsplit(".", 1)[0] in (config.get("modules_to_save") or [])}
    unknown = sorted(set(extra) - head_ok)
    if unknown:
        raise CheckpointError(f"{directory}: unexpected tensors {unknown[:3]} (not LoRA factors nor modules_to_save)")
    params = dict(model.named_parameters())
    for n, t in extra.items():
        if n not in params or params[n].shape != t.shape:
            got = tuple(params[n].shape) if n in params else None
            raise CheckpointError(
                f"{directory}: modules_to_save tensor {n} {tuple(t.shape)} does not fit the model ({got}); "
                "reset the classifier to the adapter's number of classes first"
            )
    for n in names:
        a, b, lin = factors[n]["A"], factors[n]["B"], modules[n]
        if tuple(a.shape) != (r, lin.in_features) or tuple(b.shape) != (lin.out_features, r):
            raise CheckpointError(
                f"{directory}: {n} factors {tuple(a.shape)}/{tuple(b.shape)} do not fit a "
                f"{lin.in_features}→{lin.out_features} layer"
            )
    apply_(model, LoRAConfig(rank=r, alpha=scale * r, targets=tuple(names), dropout=0.0))
    mods = lora_modules(model)
    with torch.no_grad():
        for n in names:
            a, b = factors[n]["A"], factors[n]["B"]
            mods[n].lora_A.copy_(a)
            mods[n].lora_B.copy_(b)
        for n, t in extra.items():
            params[n].copy_(t)
    return model


def _module_order(model: nn.Module):
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return lambda n: order.get(n, len(order))


def _check_targets(targets, names: list[str], directory) -> None:
    """Every loaded module must be one peft would wrap given ``target_modules`` (list: exact or suffix; str: regex)."""
    if targets is None:
        return
    if isinstance(targets, str):
        bad = [n for n in names if not re.fullmatch(targets, n)]
    else:
        bad = [n for n in names if not any(n == t or n.endswith("." + t) for t in targets)]
    if bad:
        raise CheckpointError(f"{directory}: weights for {bad[:3]} are not covered by target_modules {targets!r}")
