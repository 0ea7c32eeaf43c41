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
