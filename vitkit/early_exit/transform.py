"""The ``early_exit`` transform (runtime): attach exit heads, train them, calibrate, patch the forward.

Artifacts: the heads' weights are saved in ``model.safetensors`` (keys ``exit_heads.*``); on load,
:func:`prepare_early_exit` re-creates the heads before the weights are read and :func:`restore_early_exit`
re-patches the forward with the recorded exits, heads and (calibrated) thresholds — no retraining.
"""

from __future__ import annotations

import logging
from typing import Any

import torch.nn as nn
from torch.utils.data import Dataset

from ..adapters import adapter_for
from ..adapters.runtime import reduced_dtype
from ..errors import ConfigError, UnsupportedModelError
from ..registry import register_transform
from .config import EarlyExitConfig
from .heads import build_head, init_from_final
from .runtime import HEADS, STATE, ExitState, patch

_log = logging.getLogger(__name__)

PAPER = "LGViT: Dynamic Early Exiting for Accelerating Vision Transformer (Xu et al., ACM MM 2023)"


def _host(model: nn.Module) -> dict[str, Any]:
    """What exit heads need from the host: width, classes, pooling, prefix tokens, final norm, classifier."""
    host = adapter_for(model)
    info = host.describe(model)
    if info.global_pool not in ("token", "avg", "map"):
        raise UnsupportedModelError(
            f"early exit needs a pooled classifier (global_pool 'token', 'avg' or 'map'), got {info.global_pool!r}"
        )
    if info.pool_include_prefix:
        raise UnsupportedModelError("early exit does not handle pool_include_prefix=True: use the default pooling")
    if info.num_classes <= 0:
        raise UnsupportedModelError("early exit needs a classifier head (num_classes > 0)")
    final_norm = host.feature_norm(model)  # the norm applied to the pooled feature
    eps = float(getattr(final_norm, "eps", 1e-6))
    return {
        "info": info,
        "num_prefix": host.prefix_tokens(model),
        "final_norm": final_norm,
        "classifier": host.heads(model)[0][1],
        "eps": eps,
    }


def _build_heads(model: nn.Module, heads: list[str], *, init: bool) -> nn.ModuleList:
    host = _host(model)
    info = host["info"]
    # an attention-pool ('map') host's exits average the patch tokens: the pool's own attention runs once, at the end
    pool = "token" if info.global_pool == "token" else "avg"
    mods = []
    for kind in heads:
        h = build_head(
            kind,
            dim=info.embed_dim,
            num_classes=info.num_classes,
            num_heads=info.num_heads[0],
            pool=pool,
            num_prefix=host["num_prefix"],
            eps=host["eps"],
        )
        if init:
            init_from_final(h, host["final_norm"], host["classifier"])
        mods.append(h)
    ref = next(model.parameters())
    return nn.ModuleList(mods).to(device=ref.device, dtype=ref.dtype).eval()


def _check_fresh(model: nn.Module) -> None:
    if getattr(model, STATE, None) is not None or HEADS in model._modules:
        raise ConfigError("model already has early exits: call vitkit.early_exit.remove(model) before a new early_exit")


@register_transform(
    EarlyExitConfig,
    name="early_exit",
    kind="runtime",
    paper=PAPER,
    restore=lambda model, cfg, decisions: restore_early_exit(model, cfg, decisions),
    prepare=lambda model, cfg, decisions: prepare_early_exit(model, cfg, decisions),
    example={"exits": [0], "threshold": 0.2, "train": {"epochs": 0}},
    zero={"exits": [0], "threshold": 1 - 1e-6, "train": {"epochs": 0}},  # no sample is that confident
)
def apply_early_exit(model: nn.Module, cfg: EarlyExitConfig, *, calib=None, dry_run: bool = False) -> dict[str, Any]:
    """Attach exit heads after ``cfg.exits``, train them (frozen backbone), optionally calibrate τ, patch."""
    _check_fresh(model)
    if reduced_dtype(model) is not None:
        raise ConfigError(
            "early exit on a reduced-precision (bf16) model is not supported yet: drop the precision step, or deploy "
            "the early-exit model with ONNX Runtime"
        )
    names = _host(model)["info"].block_names
    exits, heads, thresholds = cfg.resolve(names)
    decisions: dict[str, Any] = {"exits": exits, "heads": heads, "thresholds": thresholds, "criterion": cfg.criterion}
    where = ", ".join(f"{names[b]}:{h}" for b, h in zip(exits, heads, strict=True))
    if dry_run:
        decisions["summary"] = f"would add {len(exits)} exit head(s) ({where}), {cfg.train.epochs} epoch(s) of KD"
        return decisions
    model.add_module(HEADS, _build_heads(model, heads, init=True))
    patch(model, ExitState(exits, heads, thresholds, cfg.criterion))
    decisions["head_params"] = sum(p.numel() for p in getattr(model, HEADS).parameters())
    from ..data import load_dataset
    from .train import calibrate, train_exit_heads

    if cfg.train.epochs > 0:
        train_set = load_dataset(cfg.data, cfg.split, model=model)
        decisions["training"] = train_exit_heads(
            model, train_set, cfg.train, temperature=cfg.temperature, alpha=cfg.alpha, limit=cfg.limit
        )
    if cfg.max_drop is not None:
        val = calib if isinstance(calib, Dataset) else load_dataset(cfg.data, cfg.calib_split, model=model)
        decisions["calibration"] = calibrate(
            model, val, cfg.max_drop, per_exit=cfg.calibration == "per-exit", cost=cfg.cost
        )
        decisions["thresholds"] = list(getattr(model, STATE).thresholds)
        decisions["active"] = list(getattr(model, STATE).active)
    thr = decisions["thresholds"]
    active = decisions.get("active") or [True] * len(exits)
    if len(set(thr)) == 1 and all(active):
        tau = f"τ={thr[0]:.4g}"
    else:
        tau = "τ=[" + ", ".join(f"{t:.4g}" if a else "off" for t, a in zip(thr, active, strict=True)) + "]"
    decisions["summary"] = f"{len(exits)} exit head(s) ({where}), {cfg.criterion} {tau}"
    return decisions


def prepare_early_exit(model: nn.Module, cfg: EarlyExitConfig, decisions: dict[str, Any]) -> None:
    """Before the artifact's weights are loaded: create the (untrained) heads so their keys exist."""
    heads = list(decisions.get("heads") or cfg.resolve(adapter_for(model).describe(model).block_names)[1])
    model.add_module(HEADS, _build_heads(model, heads, init=False))


def restore_early_exit(model: nn.Module, cfg: EarlyExitConfig, decisions: dict[str, Any]) -> None:
    """After the weights: patch the forward with the recorded exits / heads / thresholds."""
    exits, heads, thresholds = cfg.resolve(adapter_for(model).describe(model).block_names)
    exits = list(decisions.get("exits", exits))
    heads = list(decisions.get("heads", heads))
    thresholds = [float(t) for t in decisions.get("thresholds", thresholds)]
    if HEADS not in model._modules:  # restored without the pre-weights hook: heads would be untrained
        raise ConfigError("early_exit restore needs its heads created before the weights load (prepare hook)")
    active = [bool(a) for a in decisions.get("active") or [True] * len(exits)]
    patch(model, ExitState(exits, heads, thresholds, decisions.get("criterion", cfg.criterion), active=active))
