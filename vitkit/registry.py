"""One registry for every user-visible method: transforms (applied to a model in place, composable in a recipe)
and merge methods (``vitkit.merge``: several state dicts in, one out). Listing (``vitkit list``), recipe and
merge-YAML parsing, ``apply_`` and the parametrized tests all read it. Method packages register on import
(``import vitkit`` imports them all)."""

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
MergeFn = Callable[..., dict[str, Any]]
#: ``workdir -> config kwargs`` for settings that need files: ``workdir / "model"`` holds the untouched model
#: saved as an artifact (a teacher to distil from, models to merge).
ExampleFn = Callable[[Any], dict[str, Any]]
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

    ``example`` and ``zero`` are config keyword sets the registry-wide tests use, so a new method is tested
    for free: ``example`` a cheap setting that really changes a tiny model (dry-run, YAML round trip, save →
    load), ``zero`` the zero-strength setting that must leave its outputs unchanged (None: the method has none,
    e.g. quantization). ``after`` names transforms that must have run before this one (``lora_merge`` after
    ``lora``); the tests apply their examples first.
    """

    name: str
    config_cls: type[TransformConfig]
    apply: ApplyFn
    kind: str
    paper: str
    restore: RestoreFn | None = None
    prepare: RestoreFn | None = None
    example: dict[str, Any] | ExampleFn | None = None
    zero: dict[str, Any] | ExampleFn | None = None
    after: tuple[str, ...] = ()

    @property
    def rank(self) -> int:
        return KIND_ORDER.index(self.kind)


@dataclass(frozen=True)
class MergeSpec:
    """A registered merge method: ``fn(sources, base, cfg, ctx) -> state_dict`` (see :mod:`vitkit.merging`).
    ``needs`` lists extra inputs: ``"model"``, ``"evaluate"``, ``"objective"``, ``"calib"``."""

    name: str
    config_cls: type[TransformConfig]
    fn: MergeFn
    paper: str
    needs_base: bool
    needs: tuple[str, ...] = ()
    kind: str = "merge"


_REGISTRY: dict[str, TransformSpec | MergeSpec] = {}


def _add(spec: TransformSpec | MergeSpec) -> None:
    existing = _REGISTRY.get(spec.name)
    if existing is not None and (
        type(existing) is not type(spec) or existing.config_cls.__qualname__ != spec.config_cls.__qualname__
    ):
        raise ValueError(f"method name {spec.name!r} is already registered by {existing.config_cls.__name__}")
    _REGISTRY[spec.name] = spec


def _lookup(name: str, cls: type, what: str, plural: str):
    spec = _REGISTRY.get(name)
    if isinstance(spec, cls):
        return spec
    valid = sorted(n for n, s in _REGISTRY.items() if isinstance(s, cls))
    close = difflib.get_close_matches(str(name), valid, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError(f"unknown {what} {name!r}{hint}; valid {plural}: {valid}")


def register_transform(
    config_cls: type[TransformConfig],
    *,
    name: str,
    kind: str,
    paper: str = "",
    restore: RestoreFn | None = None,
    prepare: RestoreFn | None = None,
    example: dict[str, Any] | ExampleFn | None = None,
    zero: dict[str, Any] | ExampleFn | None = None,
    after: tuple[str, ...] = (),
) -> Callable[[ApplyFn], ApplyFn]:
    """Decorator registering ``fn(model, cfg, *, calib=None, dry_run=False) -> decisions`` under ``name``."""
    if kind not in KIND_ORDER:
        raise ValueError(f"kind must be one of {KIND_ORDER}, got {kind!r}")
    if not (isinstance(config_cls, type) and issubclass(config_cls, TransformConfig)):
        raise TypeError("config_cls must be a TransformConfig subclass")

    def decorator(fn: ApplyFn) -> ApplyFn:
        _add(TransformSpec(name, config_cls, fn, kind, paper, restore, prepare, example, zero, tuple(after)))
        return fn

    return decorator


def unregister_transform(name: str) -> None:
    _REGISTRY.pop(name, None)


def get_transform(name: str) -> TransformSpec:
    return _lookup(name, TransformSpec, "transform", "transforms")


def spec_for_config(cfg: TransformConfig) -> TransformSpec:
    for spec in _REGISTRY.values():
        if isinstance(spec, TransformSpec) and type(cfg) is spec.config_cls:
            return spec
    raise ConfigError(f"{type(cfg).__name__} is not a registered transform config; see vitkit.list_transforms()")


def list_transforms(pattern: str = "*", *, kind: str | None = None) -> list[TransformSpec]:
    """Registered transforms whose name matches the glob ``pattern`` (and ``kind`` if given), by name."""
    return [s for s in list_methods(pattern, kind=kind) if isinstance(s, TransformSpec)]


def register_merge(
    name: str, config_cls: type[TransformConfig], *, paper: str, needs_base: bool, needs: tuple[str, ...] = ()
) -> Callable[[MergeFn], MergeFn]:
    """Decorator registering a merge method ``fn(sources, base, cfg, ctx) -> state_dict`` under ``name``."""

    def decorator(fn: MergeFn) -> MergeFn:
        _add(MergeSpec(name, config_cls, fn, paper, needs_base, tuple(needs)))
        return fn

    return decorator


def get_merge_method(name: str) -> MergeSpec:
    return _lookup(name, MergeSpec, "merge method", "methods")


def merge_method_for_config(cfg: TransformConfig) -> MergeSpec:
    for spec in _REGISTRY.values():
        if isinstance(spec, MergeSpec) and type(cfg) is spec.config_cls:
            return spec
    valid = sorted(s.config_cls.__name__ for s in _REGISTRY.values() if isinstance(s, MergeSpec))
    raise ConfigError(f"{type(cfg).__name__} is not a merge config; use one of {valid}")


def list_merge_methods(pattern: str = "*") -> list[MergeSpec]:
    return [s for s in list_methods(pattern) if isinstance(s, MergeSpec)]


def list_methods(pattern: str = "*", *, kind: str | None = None) -> list[TransformSpec | MergeSpec]:
    """Every registered method (transforms and merge methods) matching the glob ``pattern``, by name;
    ``kind`` is a transform kind (:data:`KIND_ORDER`) or ``"merge"``."""
    return [
        s for n, s in sorted(_REGISTRY.items()) if fnmatch.fnmatchcase(n, pattern) and (kind is None or s.kind == kind)
    ]
