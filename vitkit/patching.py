"""Runtime patches swap ``__class__`` (weights and state-dict keys unchanged): :func:`mixin_class` makes — once per
(mixin, base, name) — the class ``name(mixin, base)``, defined in and importable from ``module``."""

from __future__ import annotations

import sys

_CLASSES: dict[tuple[type, type, str, str], type] = {}


def mixin_class(mixin: type, base: type, name: str, *, module: str, doc: str | None = None) -> type:
    """The cached subclass ``name`` of ``(mixin, base)``: ``mixin``'s methods first, everything else ``base``'s."""
    key = (mixin, base, name, module)
    if key not in _CLASSES:
        cls = type(name, (mixin, base), {"__doc__": mixin.__doc__ if doc is None else doc, "__module__": module})
        if getattr(sys.modules[module], name, None) is not mixin:  # never shadow the mixin itself (same name)
            setattr(sys.modules[module], name, cls)
        _CLASSES[key] = cls
    return _CLASSES[key]
