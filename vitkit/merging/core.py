"""``vitkit.merge``: the engine every merge method runs through.

A method is ``fn(sources, base, cfg, ctx) -> state_dict`` registered with :func:`vitkit.registry.register_merge`
(the one registry; ``vitkit list`` shows merge methods beside transforms), one file per method in this package.
Per-tensor methods (average, task arithmetic, TIES, DARE) run through :func:`stream_merge`, which reads the N
tensors of one name, merges them, and moves on — so a merge of N ``.safetensors`` files holds the output plus
one tensor per model, not N models. Methods that run the network (greedy soup, FW-Merging, RegMean, PLeaS) load
one model at a time into a private template copy (:meth:`MergeContext.template`, :func:`load_into`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..configs import TransformConfig, select_names
from ..errors import ConfigError
from ..models.load import load_state_dict_strict
from ..registry import merge_method_for_config
from .sources import TensorSource, check_compatible, compute_dtype, open_source, open_sources

_log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, str], None]


@dataclass
class MergeContext:
    """Extra inputs some methods need, plus a progress callback ``progress(done, total, what)``."""

    model: nn.Module | None = None
    evaluate: Callable[[nn.Module], float] | None = None
    objective: Callable[[nn.Module], torch.Tensor] | None = None
    calib: Any = None
    progress: ProgressFn | None = None
    raw_models: list = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # decisions a method reports back (chosen soup, ...)

    def template(self, what: str) -> nn.Module:
        """A private copy of the architecture (``model=``, else the first nn.Module / artifact dir input)."""
        if self.model is not None:
            return copy.deepcopy(self.model)
        for m in self.raw_models:
            if isinstance(m, nn.Module):
                return copy.deepcopy(m)
        from pathlib import Path

        for m in self.raw_models:
            if isinstance(m, str | Path) and Path(m).is_dir():
                from ..models import load

                return load(m)
        raise ConfigError(f"{what} runs the network: pass model= (an nn.Module of the architecture) or artifact dirs")


def merge(
    models: Sequence[Any],
    cfg: TransformConfig,
    base: Any = None,
    *,
    model: nn.Module | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    objective: Callable[[nn.Module], torch.Tensor] | None = None,
    calib: Any = None,
    progress: ProgressFn | None = None,
    info: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Merge ``models`` (state dicts, nn.Modules, ``.safetensors``/``.pth`` paths, artifact dirs) into a state dict.

    ``cfg`` picks the method (``AverageConfig``, ``TaskArithmeticConfig``, ``TIESConfig``, ...); ``base`` is the
    pretrained model task vectors are taken against (required by the task-vector methods). Data-based methods
    take ``model=`` (architecture template), ``evaluate=`` (greedy soup), ``objective=`` (FW-Merging) or
    ``calib=`` (RegMean, PLeaS). Inputs are never modified; ``.safetensors`` inputs are read tensor by tensor.
    ``info`` (a dict) receives the method's decisions (e.g. the greedy soup's ingredients).
    """
    method = merge_method_for_config(cfg)
    if isinstance(models, dict | str | nn.Module):
        raise ConfigError("models must be a list (of state dicts, paths or artifact dirs), not a single model")
    raw = list(models)
    sources = open_sources(raw)
    base_src = open_source(base, label="base") if base is not None else None
    if method.needs_base and base_src is None:
        raise ConfigError(f"{method.name} takes task vectors against a base: pass base= (the pretrained model)")
    ctx = MergeContext(model, evaluate, objective, calib, progress, raw, info if info is not None else {})
    for need in method.needs:
        if need in ("evaluate", "objective", "calib") and getattr(ctx, need) is None:
            raise ConfigError(f"{method.name} needs {need}=; see help(vitkit.{type(cfg).__name__})")
    try:
        return method.fn(sources, base_src, cfg, ctx)
    finally:
        for s in sources + ([base_src] if base_src is not None else []):
            s.close()


# -- the streaming executor ------------------------------------------------------------------------------------
TensorFn = Callable[[str, list[torch.Tensor], "torch.Tensor | None"], torch.Tensor]


def selected_keys(keys: list[str], cfg: TransformConfig) -> set[str]:
    return set(select_names(keys, cfg.targets, cfg.skip, what="tensors"))


def stream_merge(
    sources: list[TensorSource],
    base: TensorSource | None,
    cfg: TransformConfig,
    tensor_fn: TensorFn,
    progress: ProgressFn | None = None,
) -> dict[str, torch.Tensor]:
    """Apply ``tensor_fn(name, [θ_i], θ0)`` to every selected floating tensor; copy the rest from the reference
    (base, else model 0). Tensors are upcast per :func:`compute_dtype` and returned in the widest input dtype."""
    keys = check_compatible(sources, base)
    chosen = selected_keys(keys, cfg)
    ref = base if base is not None else sources[0]
    out: dict[str, torch.Tensor] = {}
    for i, k in enumerate(keys):
        if k not in chosen or not ref.dtype(k).is_floating_point:
            out[k] = ref.get(k).clone()
        else:
            dts = [s.dtype(k) for s in sources] + ([base.dtype(k)] if base is not None else [])
            comp, out_dt = compute_dtype(dts)
            ts = [s.get(k).to(comp) for s in sources]
            b = base.get(k).to(comp) if base is not None else None
            out[k] = tensor_fn(k, ts, b).to(out_dt)
        if progress:
            progress(i + 1, len(keys), k)
    return out


def per_model_weights(cfg_weights, n: int, cls: str) -> list[float]:
    """``cfg_weights`` as floats (all 1 when ``None``), checked to give one weight per model."""
    if cfg_weights is None:
        return [1.0] * n
    if len(cfg_weights) != n:
        raise ConfigError(f"{cls}.weights has {len(cfg_weights)} entries for {n} models: give one weight per model")
    return [float(w) for w in cfg_weights]


# -- helpers of the methods that run the network ---------------------------------------------------------------
def load_into(model: nn.Module, state: dict[str, torch.Tensor], *, source: str = "merged weights") -> nn.Module:
    """Load ``state`` into ``model`` (strict), cast to the model's own dtypes."""
    own = model.state_dict()
    cast = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
    load_state_dict_strict(model, cast, source=source)
    return model


def materialize(src: TensorSource, keys: list[str]) -> dict[str, torch.Tensor]:
    """All of ``src``'s tensors as float32 (floating) copies, in ``keys`` order."""
    return {k: (src.get(k).float() if src.dtype(k).is_floating_point else src.get(k)).clone() for k in keys}
