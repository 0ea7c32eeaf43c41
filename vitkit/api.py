"""The verbs: ``apply_`` (in-place transforms with an order check) and re-exports of ``benchmark``."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterable

import torch.nn as nn

from .configs import TransformConfig
from .errors import ConfigError, OrderError
from .history import append_step, step_history
from .registry import KIND_ORDER, get_transform, list_transforms, spec_for_config
from .report import Report, StepRecord

_log = logging.getLogger(__name__)


def _as_configs(cfgs) -> list[TransformConfig]:
    if isinstance(cfgs, TransformConfig):
        return [cfgs]
    if isinstance(cfgs, Iterable) and not isinstance(cfgs, str | bytes | dict):
        out = list(cfgs)
        for c in out:
            if not isinstance(c, TransformConfig):
                raise ConfigError(f"apply_ takes TransformConfig objects, got {type(c).__name__}")
        return out
    raise ConfigError(f"apply_ takes a TransformConfig or a list of them, got {type(cfgs).__name__}")


def check_order(names_and_kinds: list[tuple[str, str]]) -> None:
    """Raise :class:`OrderError` unless kinds follow structure → weights → numerics → runtime."""
    for (prev, prev_kind), (name, kind) in zip(names_and_kinds, names_and_kinds[1:], strict=False):
        if KIND_ORDER.index(kind) < KIND_ORDER.index(prev_kind):
            raise OrderError(
                f"step {name!r} ({kind}) cannot come after {prev!r} ({prev_kind}): "
                f"order must be {' → '.join(KIND_ORDER)}; reorder the steps"
            )


def apply_(model: nn.Module, cfgs, calib=None, dry_run: bool = False) -> Report:
    """Apply transforms to ``model`` in place (in the given order) and return a :class:`Report`.

    ``calib`` is a calibration batch/dataset for data-driven methods. ``dry_run=True`` returns the
    decisions each step would take without changing the model. If a step fails, the model is restored
    to its state before the call.
    """
    list_transforms()  # register built-ins
    configs = _as_configs(cfgs)
    specs = [spec_for_config(c) for c in configs]
    history = [(s.name, get_transform(s.name).kind) for s in step_history(model)]
    check_order(history + [(s.name, s.kind) for s in specs])
    report = Report(dry_run=dry_run)
    snapshot = None if dry_run else copy.deepcopy(model)
    try:
        for spec, cfg in zip(specs, configs, strict=True):
            t0 = time.perf_counter()
            decisions = spec.apply(model, cfg, calib=calib, dry_run=dry_run) or {}
            record = StepRecord(spec.name, spec.kind, cfg.version, cfg.to_dict(), dict(decisions))
            record.seconds = round(time.perf_counter() - t0, 4)
            report.steps.append(record)
            if not dry_run:
                append_step(model, record)
            _log.info("%s %s: %s", "planned" if dry_run else "applied", spec.name, decisions.get("summary", ""))
    except BaseException:
        if snapshot is not None:  # leave the caller's model as it was
            model.__class__ = snapshot.__class__
            model.__dict__ = snapshot.__dict__
        raise
    return report


def merge_back(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into the weights (in place) and return the now plain timm model: ``apply_`` of
    the ``lora_merge`` step (Hu et al. 2022, §4.1: W = W0 + (α/r) B A), recorded so artifacts replay it.

    The result has exactly the state-dict keys of the model before LoRA was added, and the same outputs.
    Merging twice raises :class:`ConfigError`.
    """
    from .adapt import LoRAMergeConfig

    apply_(model, LoRAMergeConfig())
    return model
