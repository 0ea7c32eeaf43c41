"""Config base class, per-layer schedules and module-name globs shared by every transform.

Every method has one frozen dataclass deriving from :class:`TransformConfig`. Configs are validated on
construction, serialize to plain dicts (YAML/JSON friendly) and carry a ``version`` so that old recipes
can be read or refused explicitly.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import ConfigError


@dataclass(frozen=True)
class TransformConfig:
    """Base of every method config.

    ``targets`` / ``skip`` are module-name globs (``"blocks.*"``, ``"blocks.1[01]"``) restricting where a
    transform acts; each method says what it matches them against (blocks, linears, ...). A pattern that
    matches nothing is an error, never a silent no-op.
    """

    version: ClassVar[int] = 1
    targets: tuple[str, ...] | None = field(default=None, kw_only=True)
    skip: tuple[str, ...] = field(default=(), kw_only=True)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            section = _section_default(f)
            if section is not None:
                object.__setattr__(self, f.name, _as_section(section, value, f"{type(self).__name__}.{f.name}"))
            elif isinstance(value, list):
                object.__setattr__(self, f.name, _freeze(value))
            elif isinstance(value, dict):
                object.__setattr__(self, f.name, _freeze(value))
        for name in ("targets", "skip"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
        if self.targets is not None and not all(isinstance(p, str) for p in self.targets):
            raise ConfigError(f"{type(self).__name__}.targets must be glob strings, got {self.targets!r}")
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` for out-of-range values. Subclasses override."""

    # -- serialization -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (tuples become lists, nested sections become dicts), defaults included."""
        return {f.name: _thaw(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def migrate(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """Rewrite a dict written by config ``version`` (older than :attr:`version`) into today's keys."""
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, *, version: int | None = None) -> TransformConfig:
        """Build from a dict, refusing unknown keys (listing the valid ones) and newer versions; dicts of an
        older version pass through :meth:`migrate` first."""
        data = dict(data or {})
        if "version" in data:
            version = data.pop("version")
        if version is not None and int(version) > cls.version:
            raise ConfigError(
                f"{cls.__name__} version {version} is newer than this vitkit understands "
                f"({cls.version}): upgrade vitkit"
            )
        if version is not None and int(version) < cls.version:
            data = cls.migrate(data, int(version))
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            for f in dataclasses.fields(cls):
                section = _section_type(f)
                if section is not None and set(unknown) <= {g.name for g in dataclasses.fields(section)}:
                    raise ConfigError(
                        f"{unknown} are {section.__name__} keys: put them under {f.name!r} in {cls.__name__} "
                        f"(e.g. {f.name}: {{{unknown[0]}: ...}})"
                    )
            raise ConfigError(f"unknown key(s) {unknown} for {cls.__name__}; valid keys: {valid}")
        try:
            return cls(**data)
        except TypeError as exc:  # wrong type that dataclass itself rejects
            raise ConfigError(f"invalid {cls.__name__}: {exc}") from None

    def replace(self, **changes: Any) -> TransformConfig:
        """A copy with ``changes``; a nested section given as a dict changes only the keys it names."""
        for f in dataclasses.fields(self):
            if f.name in changes and isinstance(changes[f.name], dict) and _section_type(f) is not None:
                changes[f.name] = _as_section(getattr(self, f.name), changes[f.name], f"{type(self).__name__}.{f.name}")
        return dataclasses.replace(self, **changes)


def _freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return _FrozenDict(value)
    return value


def _section_default(f: dataclasses.Field) -> Any:
    """The default of a nested config section (a field whose default is a dataclass instance), else None."""
    if f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            return default
    return None


def _section_type(f: dataclasses.Field) -> type | None:
    default = _section_default(f)
    return None if default is None else type(default)


def _as_section(default: Any, value: Any, where: str) -> Any:
    """A nested section given as a dict (YAML) becomes its dataclass, missing keys taken from the field's own
    default (so ``train: {epochs: 3}`` keeps the method's lr); unknown keys are refused by name."""
    section = type(default)
    if isinstance(value, section):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of {section.__name__} keys, got {value!r}")
    valid = [f.name for f in dataclasses.fields(section)]
    unknown = sorted(set(value) - set(valid))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid keys: {valid}")
    try:
        return dataclasses.replace(default, **{k: _freeze(v) for k, v in value.items()})
    except TypeError as exc:
        raise ConfigError(f"invalid {where}: {exc}") from None


def _thaw(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _thaw(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    if isinstance(value, dict):
        return {k: _thaw(v) for k, v in value.items()}
    return value


class _FrozenDict(dict):
    """A hashable, read-only dict so that configs holding mappings stay frozen."""

    def __init__(self, data: dict) -> None:
        super().__init__({k: _freeze(v) for k, v in data.items()})

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items(), key=lambda kv: str(kv[0]))))

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("config mappings are read-only")

    __setitem__ = __delitem__ = update = pop = popitem = setdefault = clear = _readonly  # type: ignore[assignment]


# -- per-layer schedules ------------------------------------------------------------------------------
def resolve_schedule(value: Any, depth: int, *, name: str = "value", default: float | int | None = None) -> list:
    """Expand a per-layer setting into a list of ``depth`` values.

    Accepted forms (one helper for every method):

    * a scalar ``v`` → ``[v] * depth``;
    * a list/tuple of length ``depth`` → as is;
    * ``{"start": a, "end": b}`` → linear ramp from a (block 0) to b (block depth-1), rounded like the
      input type (ints stay ints);
    * ``{"at": {layer: v, ...}, "default": d}`` → ``v`` at the given layers (negative indices allowed),
      ``d`` (or ``default``) elsewhere.
    """
    if depth <= 0:
        raise ConfigError(f"{name}: model depth must be positive, got {depth}")
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a number, list or schedule dict, got a bool")
    if isinstance(value, int | float):
        return [value] * depth
    if isinstance(value, list | tuple):
        if len(value) != depth:
            raise ConfigError(f"{name}: per-layer list has {len(value)} entries but the model has {depth} blocks")
        return list(value)
    if isinstance(value, dict):
        keys = set(value)
        if keys == {"start", "end"}:
            a, b = value["start"], value["end"]
            as_int = isinstance(a, int) and isinstance(b, int)
            if depth == 1:
                return [a]
            ramp = [a + (b - a) * i / (depth - 1) for i in range(depth)]
            return [int(math.floor(v + 0.5)) for v in ramp] if as_int else ramp
        if "at" in keys and keys <= {"at", "default"}:
            fill = value.get("default", default)
            if fill is None:
                raise ConfigError(f"{name}: schedule {{'at': ...}} needs a 'default' for the other layers")
            out = [fill] * depth
            for layer, v in dict(value["at"]).items():
                idx = int(layer)
                if not -depth <= idx < depth:
                    raise ConfigError(f"{name}: layer {layer} is out of range for a model with {depth} blocks")
                out[idx] = v
            return out
        raise ConfigError(
            f"{name}: schedule dict must be {{'start','end'}} or {{'at','default'}}, got keys {sorted(keys)}"
        )
    raise ConfigError(f"{name}: expected a number, a per-layer list or a schedule dict, got {type(value).__name__}")


# -- module-name globs ------------------------------------------------------------------------------------
def select_names(
    names: Sequence[str], targets: Iterable[str] | None, skip: Iterable[str] = (), *, what: str = "modules"
) -> list[str]:
    """Filter ``names`` by ``targets`` globs (None = all) minus ``skip`` globs, in the original order.

    Any pattern that matches none of ``names`` raises :class:`ConfigError` listing a few valid names.
    """
    names = list(names)

    def matches(pattern: str) -> list[str]:
        hit = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hit:
            sample = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            raise ConfigError(f"pattern {pattern!r} matches no {what}; {what} are named like: {sample}")
        return hit

    chosen = set(names) if targets is None else {n for p in targets for n in matches(p)}
    for p in skip:
        chosen -= set(matches(p))
    return [n for n in names if n in chosen]


# -- YAML files ---------------------------------------------------------------------------------------------
def read_yaml_file(path, *, what: str = "config"):
    """Parse a YAML file, with one-line errors for a missing file or invalid YAML (recipes, merge configs)."""
    from pathlib import Path

    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
