"""What every adaptation method shares: which kind of adapter a model holds, and freezing the base model.

One model holds one kind of adapter at a time (LoRA, AdaptFormer adapters or visual prompts): adding a
second kind is refused with an error naming the first, because folding (``merge_back``), peft export
and artifact replay each assume a single kind.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

import torch.nn as nn

from ..adapters import adapter_for
from ..errors import ConfigError

#: Class attribute set on every module class an adaptation method adds (value: the method's name).
KIND_ATTR = "vitkit_adapt_kind"
#: Parameter names the adaptation step froze (so that folding back can unfreeze exactly those).
FROZEN_ATTR = "_vitkit_adapt_frozen"

KIND_NAMES = {"lora": "LoRA", "adapter": "AdaptFormer adapters", "prompt": "visual prompts (VPT)"}


def adapter_kinds(model: nn.Module) -> list[str]:
    """Kinds of adapters present in ``model`` (``"lora"``, ``"adapter"``, ``"prompt"``), sorted."""
    return sorted({k for m in model.modules() if (k := getattr(type(m), KIND_ATTR, None))})


def adapter_kind(model: nn.Module) -> str | None:
    kinds = adapter_kinds(model)
    return kinds[0] if kinds else None


def check_can_add(model: nn.Module, kind: str) -> None:
    """Refuse to add ``kind`` adapters to a model that already holds adapters (of any kind)."""
    present = adapter_kinds(model)
    if not present:
        return
    have = ", ".join(KIND_NAMES.get(k, k) for k in present)
    if kind in present:
        fix = "vitkit.merge_back(model) first" if kind == "lora" else "start from the base model"
        raise ConfigError(f"model already has {have}; adding {KIND_NAMES[kind]} twice is not supported: {fix}")
    fix = "merge them back first (vitkit.merge_back)" if present == ["lora"] else "start from the base model"
    raise ConfigError(f"model already has {have}; cannot add {KIND_NAMES[kind]} on top: {fix}")


def head_param_names(model: nn.Module) -> list[str]:
    """Parameter names of the classifier head(s) (``head.*``, and ``head_dist.*`` on distilled DeiT)."""
    heads = {id(h) for _, h in adapter_for(model).heads(model)}
    out = []
    for mname, mod in model.named_modules():
        if id(mod) in heads:
            out += [f"{mname}.{p}" for p, _ in mod.named_parameters()]
    return out


def freeze_base(model: nn.Module, adapter_params: Iterable[str], train_also: Iterable[str] | None) -> list[str]:
    """Freeze every parameter except the adapter's and those matching ``train_also`` (globs over parameter
    names; ``None`` = the classifier head(s)). Returns the names still trainable; records what it froze."""
    names = [n for n, _ in model.named_parameters()]
    keep = set(adapter_params)
    if train_also is None:
        keep |= set(head_param_names(model))
    else:
        for pattern in train_also:
            hit = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not hit:
                raise ConfigError(f"train_also pattern {pattern!r} matches no parameter; names look like {names[:3]}")
            keep |= set(hit)
    frozen = []
    for n, p in model.named_parameters():
        if n not in keep and p.requires_grad:
            p.requires_grad_(False)
            frozen.append(n)
    setattr(model, FROZEN_ATTR, sorted(set(getattr(model, FROZEN_ATTR, [])) | set(frozen)))
    return [n for n, p in model.named_parameters() if p.requires_grad]


def unfreeze_base(model: nn.Module) -> None:
    """Undo :func:`freeze_base`: parameters it froze become trainable again."""
    frozen = set(model.__dict__.pop(FROZEN_ATTR, []))
    for n, p in model.named_parameters():
        if n in frozen:
            p.requires_grad_(True)


def trainable_summary(model: nn.Module) -> dict[str, float | int]:
    """``{trainable, total, percent}`` parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": int(train), "total": int(total), "percent": round(100.0 * train / max(total, 1), 3)}
