"""The checks every config's ``validate()`` uses, each raising :class:`~vitkit.errors.ConfigError` with one line
that names the field, the allowed values and what was given. ``bool`` is never accepted as a number.

    check_int(self.rank, "LoRAConfig.rank", low=1)
    check_number(self.ratio, "PruneConfig.ratio", low=0.0, high=1.0, high_open=True)
    check_choice(self.target, "PruneConfig.target", TARGETS)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .errors import ConfigError


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def _range_text(low, high, low_open: bool, high_open: bool) -> str:
    low, high = (f"{v:g}" if isinstance(v, float) else v for v in (low, high))
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return ""


def _in_range(value, low, high, low_open: bool, high_open: bool) -> bool:
    if low is not None and (value <= low if low_open else value < low):
        return False
    return not (high is not None and (value >= high if high_open else value > high))


def check_int(
    value: Any, name: str, *, low: int | None = None, high: int | None = None, optional: bool = False, why: str = ""
) -> Any:
    """An ``int`` (not ``bool``) in ``[low, high]``; ``None`` passes when ``optional``."""
    if optional and value is None:
        return value
    if not is_int(value) or not _in_range(value, low, high, False, False):
        bounds = _range_text(low, high, False, False)
        kind = "a positive int" if low == 1 and high is None else f"an int{' ' + bounds if bounds else ''}"
        raise ConfigError(f"{name} must be {kind}{' or null' if optional else ''}{why}, got {value!r}")
    return value


def check_number(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
    why: str = "",
) -> Any:
    """A real number (int or float, not ``bool``, not NaN) within the given bounds."""
    if optional and value is None:
        return value
    if not is_number(value) or not _in_range(value, low, high, low_open, high_open):
        if low == 0 and low_open and high is None:
            kind = "a positive number"
        else:
            bounds = _range_text(low, high, low_open, high_open)
            kind = bounds if low is not None and high is not None else f"a number{' ' + bounds if bounds else ''}"
        raise ConfigError(f"{name} must be {kind}{' or null' if optional else ''}{why}, got {value!r}")
    return value


def check_choice(value: Any, name: str, choices: Iterable[Any], *, why: str = "") -> Any:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {choices}{why}, got {value!r}")
    return value


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def check_ints(values: Any, name: str, *, low: int | None = None, high: int | None = None, why: str = "") -> tuple:
    """A non-empty sequence of ints within bounds, returned as a tuple."""
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise ConfigError(f"{name} must be a non-empty list of ints{why}, got {values!r}")
    values = tuple(values)
    bounds = _range_text(low, high, False, False)
    if not values or any(not is_int(v) or not _in_range(v, low, high, False, False) for v in values):
        where = f" {bounds}" if bounds else ""
        raise ConfigError(f"{name} must be a non-empty list of ints{where}{why}, got {values!r}")
    return values
