"""The step history a model carries: the :class:`StepRecord` of every transform applied to it, in order.

Artifacts replay it on load; runtime patches remove their own entry when undone. Imports nothing above it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn

#: Attribute on the model holding its list of step records.
HISTORY_ATTR = "vitkit_steps"


def step_history(model: nn.Module) -> list:
    """A copy of the steps applied to ``model`` (empty for an untouched model)."""
    return list(getattr(model, HISTORY_ATTR, None) or [])


def set_step_history(model: nn.Module, steps: list) -> None:
    setattr(model, HISTORY_ATTR, list(steps))


def append_step(model: nn.Module, record: Any) -> None:
    set_step_history(model, step_history(model) + [record])


def drop_steps(model: nn.Module, drop: Callable[[Any], bool]) -> None:
    """Remove the records for which ``drop(record)`` is true (no-op on a model without history)."""
    if hasattr(model, HISTORY_ATTR):
        set_step_history(model, [s for s in step_history(model) if not drop(s)])


def steps_named(model: nn.Module, name: str) -> list:
    return [s for s in step_history(model) if s.name == name]


#: Where a structural step keeps a frozen copy of the model as it was before the first such step in this process
#: (held in a tuple so it is not registered as a sub-module and never saved).
ORIGINAL_ATTR = "_vitkit_unpruned"


def stash_original(model: nn.Module) -> None:
    """Keep a frozen copy of ``model`` as it is now, unless one is already kept (the first call wins)."""
    import copy

    if getattr(model, ORIGINAL_ATTR, None) is None:
        original = copy.deepcopy(model)
        original.__dict__.pop(ORIGINAL_ATTR, None)
        model.__dict__[ORIGINAL_ATTR] = (original.eval(),)


def original_model(model: nn.Module) -> nn.Module | None:
    """The model as it was before its first structural (``prune``) step in this process; None if never pruned here."""
    held = model.__dict__.get(ORIGINAL_ATTR)
    return held[0] if held else None
