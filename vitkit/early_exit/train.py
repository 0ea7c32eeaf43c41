"""Training exit heads on a frozen backbone (LGViT stage 2) and calibrating the exit threshold.

LGViT (Xu et al., ACM MM 2023, §3.3) trains in two stages: (1) backbone + exits end-to-end, (2)
self-distillation with the backbone frozen, the final classifier teaching every exit (prediction KD plus
heterogeneous feature distillation between the two head types). vitkit runs stage 2 only, so the
backbone — and hence the model's own output — is never changed: per exit ``k`` the loss is
``α · τ² KL(p_final ‖ p_k) + (1 − α) · CE(z_k, y)`` (Hinton soft KD from :mod:`vitkit.distill.losses`),
averaged over exits; no feature-distillation term. The loop is :func:`vitkit.training.fit`, run on the
``exit_heads`` ModuleList while the backbone stays in eval mode under ``no_grad``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..adapters import adapter_for
from ..adapters.runtime import host_run
from ..data import iterate_batches
from ..distill.losses import soft_kd
from ..errors import ConfigError
from ..ops.early_exit import (
    ExitCosts,
    calibrate_per_exit,
    calibrate_threshold,
    effective_thresholds,
    exit_scores,
    simulate,
)
from ..training import TrainConfig, fit
from .runtime import HEADS, all_exit_logits, exit_names, set_threshold, state

_log = logging.getLogger(__name__)


def train_exit_heads(
    model: nn.Module,
    train_set,
    train: TrainConfig,
    *,
    temperature: float = 1.0,
    alpha: float = 0.5,
    limit: int | None = None,
    progress=None,
) -> dict[str, Any]:
    """Train the exit heads of an early-exit ``model`` by distillation from its final head; backbone frozen.
    ``train``: the loop's settings; warm-up is skipped for runs under 2 epochs, no label smoothing."""
    heads: nn.ModuleList = getattr(model, HEADS)
    was_training = model.training
    model.eval()  # backbone: eval mode (no dropout / drop-path), never in the optimizer
    warmup = 0.0 if train.epochs < 2 else train.warmup_epochs
    cfg = dataclasses.replace(train, warmup_epochs=warmup, label_smoothing=0.0)

    def loss_fn(net, x, y, where):
        with torch.no_grad():
            feats, teacher = all_exit_logits(model, x, with_features=True)
        total, last = 0.0, None
        for head, (h, size) in zip(getattr(net, "module", net), feats, strict=True):
            z = head(h, size)  # [B, classes]
            loss = alpha * soft_kd(z, teacher, temperature)
            if alpha < 1:
                loss = loss + (1 - alpha) * F.cross_entropy(z, y)
            total, last = total + loss, z
        return total / len(feats), last

    try:
        res = fit(heads, train_set, cfg, loss_fn=loss_fn, progress=progress, limit=limit)
    finally:
        model.train(was_training)
        heads.eval()
    return {"epochs": train.epochs, "seconds": round(res.seconds, 2), "final_loss": round(float(res.final_loss), 5)}


@torch.no_grad()
def exit_table(model: nn.Module, dataset, *, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scores ``[E, N]``, correct ``[E+1, N]`` bool, predictions ``[E+1, N]``) of every exit on ``dataset``."""
    st = state(model)
    was = model.training
    model.eval()
    scores, correct, preds = [], [], []
    for x, y in iterate_batches(dataset, batch_size):
        outs = all_exit_logits(model, x)
        p = torch.stack([o.argmax(-1) for o in outs])  # [E+1, B]
        preds.append(p)
        correct.append(p == y.view(1, -1))
        scores.append(torch.stack([exit_scores(o, st.criterion) for o in outs[:-1]]))  # [E, B]
    model.train(was)
    return torch.cat(scores, 1), torch.cat(correct, 1), torch.cat(preds, 1)


def mac_costs(model: nn.Module) -> ExitCosts:
    """Analytic MACs of each part of an early-exit forward (see :class:`~vitkit.ops.early_exit.ExitCosts`)."""
    st = state(model)
    info = adapter_for(model).describe(model)
    n, d, c = info.num_tokens, info.embed_dim, info.num_classes
    blocks = tuple(float(4 * n * d * d + 2 * n * n * d + 2 * n * d * h) for h in info.mlp_hidden)
    embed = float(info.num_patches * d * info.in_chans * info.patch_size[0] * info.patch_size[1])
    heads = tuple(float(d * c if k == "linear" else 2 * n * d * d + d * d + 2 * n * d + d * c) for k in st.heads)
    return ExitCosts(embed, blocks, tuple(st.exits), heads, float(d * c))


@torch.no_grad()
def measured_costs(model: nn.Module, example: torch.Tensor, *, repeats: int = 30) -> ExitCosts:
    """Seconds each part of a batch-1 early-exit forward takes on this machine (medians of ``repeats``
    interleaved runs of ``example[:1]``): embedding, every block, every head with its score, final head.

    These are what an exiting sample really pays; MACs miss the fixed costs of small layers (a 1-channel
    patch-embedding conv, LayerNorms, the per-exit score) that dominate at batch 1."""
    import statistics
    import time

    from ..ops.early_exit import exit_score_row

    st = state(model)
    heads = getattr(model, HEADS)
    was = model.training
    model.eval()
    run = host_run(model)
    x = example[:1]
    at = {b: k for k, b in enumerate(st.exits)}
    times: dict[str, list[float]] = {}

    def clock(key, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        times.setdefault(key, []).append(time.perf_counter() - t0)
        return out

    def head_and_score(k, h):
        return exit_score_row(heads[k](h, run.size)[0].tolist(), st.criterion)

    try:
        for r in range(repeats + 3):
            if r == 3:
                times.clear()  # the first rounds warm up
            h = clock("embed", run.embed, x)
            for i in range(run.depth):
                h = clock(f"b{i}", run.block, i, h)
                if i in at:
                    clock(f"h{at[i]}", head_and_score, at[i], h)
            clock("final", run.logits, h)
    finally:
        model.train(was)
    med = {k: statistics.median(v) for k, v in times.items()}
    return ExitCosts(
        med["embed"],
        tuple(med[f"b{i}"] for i in range(run.depth)),
        tuple(st.exits),
        tuple(med[f"h{k}"] for k in range(len(st.exits))),
        med["final"],
    )


def _ratio(idx: torch.Tensor, costs: ExitCosts, active: list[bool]) -> float:
    """The model without exits over the mean cost per sample with exiting."""
    return costs.full / costs.path(active)[idx].mean().item()


def evaluate_exits(model: nn.Module, dataset, thresholds: float | list[float] | None = None) -> dict[str, Any]:
    """Accuracy of the full model vs with exiting at ``thresholds`` (default: the model's) on ``dataset``,
    exit histogram and analytic MACs ratio — from one all-exits pass (no timing). Switched-off exits stay off."""
    st = state(model)
    scores, correct, _ = exit_table(model, dataset)
    thr = st.thresholds if thresholds is None else thresholds
    thr = [float(thr)] * len(st.exits) if isinstance(thr, int | float) else [float(t) for t in thr]
    idx, hit = simulate(scores, correct, effective_thresholds(thr, st.active))
    hist = torch.bincount(idx, minlength=len(st.exits) + 1).tolist()
    return {
        "thresholds": thr,
        "active": list(st.active),
        "top1_full": correct[-1].float().mean().item(),
        "top1_exit": hit.float().mean().item(),
        "drop_pts": 100 * (correct[-1].float().mean().item() - hit.float().mean().item()),
        "per_exit_top1": correct.float().mean(1).tolist(),
        "histogram": dict(zip(exit_names(model), hist, strict=True)),
        "macs_ratio": _ratio(idx, mac_costs(model), st.active),
    }


def calibrate(
    model: nn.Module,
    val_set,
    max_drop: float = 1.0,
    *,
    per_exit: bool = False,
    cost: str = "macs",
    example: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Calibrate the exits on ``val_set`` for a top-1 drop ≤ ``max_drop`` points vs the model's own head, and
    record the result in the early_exit step (a saved artifact keeps it).

    Default (LGViT): the single threshold with the most exits. ``per_exit=True``: one threshold per exit and
    exits switched off where they do not pay, minimising the mean ``cost`` per sample — ``"macs"``
    (analytic) or ``"latency"`` (batch-1 seconds measured here on ``example``, default the first val
    image; see :func:`measured_costs`) — with :func:`vitkit.ops.early_exit.calibrate_per_exit`."""
    if cost not in ("macs", "latency"):
        raise ConfigError(f"calibration cost must be 'macs' or 'latency', got {cost!r}")
    st = state(model)
    scores, correct, _ = exit_table(model, val_set)
    E = len(st.exits)
    if cost == "latency":
        if example is None:
            example = next(iter(iterate_batches(val_set, 1)))[0]
        costs = measured_costs(model, example)
    else:
        costs = mac_costs(model)
    if per_exit:
        thr, active, raw = calibrate_per_exit(scores, correct, float(max_drop), costs)
    else:
        t, raw = calibrate_threshold(scores, correct, float(max_drop))
        thr, active = [t] * E, [True] * E
    set_threshold(model, thr, active=active)
    idx, _ = simulate(scores, correct, effective_thresholds(thr, active))
    info = {
        "threshold": thr[0] if len(set(thr)) == 1 and all(active) else [round(t, 6) for t in thr],
        "active": active,
        "mode": "per-exit" if per_exit else "single",
        "cost": cost,
        "max_drop": float(max_drop),
        "images": int(scores.shape[1]),
        "top1_full": raw["top1_full"],
        "top1_exit": raw["top1_exit"],
        "drop_pts": round(raw["drop_pts"], 4),
        "histogram": dict(zip(exit_names(model), raw["exits"], strict=True)),
        "macs_ratio": round(_ratio(idx, mac_costs(model), active), 4),
    }
    if cost == "latency":
        info["latency_ratio_estimate"] = round(_ratio(idx, costs, active), 4)
        info["measured_ms"] = {
            "embed": round(1e3 * costs.embed, 4),
            "blocks": [round(1e3 * b, 4) for b in costs.block_costs],
            "heads": [round(1e3 * h, 4) for h in costs.heads],
            "final": round(1e3 * costs.final, 4),
        }
    _log.info(
        "calibrated exits (%s, %s): τ %s, drop %.2f pts, histogram %s",
        info["mode"],
        cost,
        info["threshold"],
        info["drop_pts"],
        info["histogram"],
    )
    return info
