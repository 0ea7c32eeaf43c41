"""Imports every built-in method package so that its transforms are registered.

Method families add one import line here when they land.
"""

import importlib
import logging

_log = logging.getLogger(__name__)

BUILTIN_PACKAGES = (
    "vitkit.tokens",
    "vitkit.quant",
    "vitkit.merging",
    "vitkit.prune",
    "vitkit.distill",
    "vitkit.adapt",
    "vitkit.early_exit",
)

for _name in BUILTIN_PACKAGES:
    try:
        importlib.import_module(_name)
    except ModuleNotFoundError as exc:  # a family not written yet
        if exc.name != _name:
            raise
        _log.debug("method package %s is not available", _name)
