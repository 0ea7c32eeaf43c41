"""One registry of transforms: listing, recipe parsing, ``apply_`` and the parametrized tests all read it."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from .configs import TransformConfig
from .errors import ConfigError

#: Execution order of transform kinds: structure (prune) → weights (merge, adapter folding) →
#: numerics (quantization) → runtime (token reduction, early exit).
KIND_ORDER = ("structure", "weights", "numerics", "runtime")

ApplyFn = Callable[..., dict[str, Any] | None]
RestoreFn = Callable[[nn.Module, TransformConfig, dict[str, Any]], None]


@dataclass(frozen=True)
class TransformSpec:
    """A registered transform.

    ``apply(model, cfg, *, calib, dry_run)`` changes ``model`` in place (unless ``dry_run``) and returns the
    decisions it took (JSON-able: kept heads, per-layer r, scales' file keys...). ``restore(model, cfg,
    decisions)`` replays it on a freshly built model when an artifact is loaded: structural and numeric
    steps before the weights are loaded, runtime steps after. ``prepare(model, cfg, decisions)`` (optional)
    runs before the weights are loaded for a runtime step that owns parameters (early-exit heads), so their
    keys exist for the strict load; its ``restore`` then runs after the weights, in step order.
    """

    name: str
    config_cls: type[TransformConfig]
    apply: ApplyFn
    kind: str
    paper: str
    restore: RestoreFn | None = None
    prepare: RestoreFn | None = None

    @property
    def rank(self) -> int:
        return KIND_ORDER.index(self.kind)


_REGISTRY: dict[str, TransformSpec] = {}


def register_transform(
    config_cls: type[TransformConfig],
    *,
    name: str,
    kind: str,
    paper: str = "",
    restore: RestoreFn | None = None,
    prepare: RestoreFn | None = None,
) -> Callable[[ApplyFn], ApplyFn]:
    """Decorator registering ``fn(model, cfg, *, calib=None, dry_run=False) -> decisions`` under ``name``."""
    if kind not in KIND_ORDER:
        raise ValueError(f"kind must be one of {KIND_ORDER}, got {kind!r}")
    if not (isinstance(config_cls, type) and issubclass(config_cls, TransformConfig)):
        raise TypeError("config_cls must be a TransformConfig subclass")

    def decorator(fn: ApplyFn) -> ApplyFn:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.config_cls.__qualname__ != config_cls.__qualname__:
            raise ValueError(f"transform name {name!r} is already registered by {existing.config_cls.__name__}")
        _REGISTRY[name] = TransformSpec(name, config_cls, fn, kind, paper, restore, prepare)
        return fn

    return decorator


def unregister_transform(name: str) -> None:
    _REGISTRY.pop(name, None)


def get_transform(name: str) -> TransformSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown transform {name!r}{hint}; valid transforms: {sorted(_REGISTRY)}") from None


def spec_for_config(cfg: TransformConfig) -> TransformSpec:
    for spec in _REGISTRY.values():
        if type(cfg) is spec.config_cls:
            return spec
    raise ConfigError(f"{type(cfg).__name__} is not a registered transform config; see vitkit.list_transforms()")


def list_transforms(pattern: str = "*", *, kind: str | None = None) -> list[TransformSpec]:
    """Registered transforms whose name matches the glob ``pattern`` (and ``kind`` if given), by name."""
    _load_builtin_transforms()
    return [
        s for n, s in sorted(_REGISTRY.items()) if fnmatch.fnmatchcase(n, pattern) and (kind is None or s.kind == kind)
    ]


def _load_builtin_transforms() -> None:
    """Import the method packages so their ``@register_transform`` decorators run."""
    from . import methods  # noqa: F401
