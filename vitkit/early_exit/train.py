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

import logging
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import iterate_batches
from ..distill.losses import soft_kd
from ..ops.early_exit import calibrate_threshold, compute_ratio, exit_scores, simulate
from ..training import TrainConfig, fit
from .runtime import HEADS, all_exit_logits, set_threshold, state

_log = logging.getLogger(__name__)


def train_exit_heads(
    model: nn.Module,
    train_set,
    *,
    epochs: int = 3,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 0.01,
    temperature: float = 1.0,
    alpha: float = 0.5,
    shift: float = 2.0,
    limit: int | None = None,
    seed: int = 0,
    threads: int | None = None,
    progress=None,
) -> dict[str, Any]:
    """Train the exit heads of an early-exit ``model`` by distillation from its final head; backbone frozen."""
    heads: nn.ModuleList = getattr(model, HEADS)
    was_training = model.training
    model.eval()  # backbone: eval mode (no dropout / drop-path), never in the optimizer
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup_epochs=0.0 if epochs < 2 else 0.5,
        label_smoothing=0.0,
        shift=shift,
        seed=seed,
        threads=threads,
    )

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
    return {"epochs": epochs, "seconds": round(res.seconds, 2), "final_loss": round(float(res.final_loss), 5)}


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


def exit_costs(model: nn.Module) -> list[float]:
    """Analytic MACs a sample pays when leaving at each exit (last entry: passing every exit to the end)."""
    from ..adapters.timm_vit import describe

    st = state(model)
    info = describe(model)
    n, d, c = info.num_tokens, info.embed_dim, info.num_classes
    blocks = [4 * n * d * d + 2 * n * n * d + 2 * n * d * h for h in info.mlp_hidden]
    embed = info.num_patches * d * info.in_chans * info.patch_size[0] * info.patch_size[1]
    head = [d * c if kind == "linear" else 2 * n * d * d + d * d + 2 * n * d + d * c for kind in st.heads]
    costs, spent = [], embed
    done_blocks, heads_paid = 0, 0
    for k, b in enumerate(st.exits):
        spent += sum(blocks[done_blocks : b + 1]) + head[k]
        done_blocks, heads_paid = b + 1, heads_paid + head[k]
        costs.append(float(spent))
    costs.append(float(spent + sum(blocks[done_blocks:]) + d * c))
    return costs


def evaluate_exits(model: nn.Module, dataset, thresholds: float | list[float] | None = None) -> dict[str, Any]:
    """Accuracy of the full model vs with exiting at ``thresholds`` (default: the model's) on ``dataset``,
    exit histogram and analytic MACs ratio — from one all-exits pass (no timing)."""
    st = state(model)
    scores, correct, _ = exit_table(model, dataset)
    thr = st.thresholds if thresholds is None else thresholds
    thr = torch.tensor([float(thr)] * len(st.exits) if isinstance(thr, int | float) else [float(t) for t in thr])
    idx, hit = simulate(scores, correct, thr)
    costs = torch.tensor(exit_costs(model), dtype=torch.float64)
    hist = torch.bincount(idx, minlength=len(st.exits) + 1).tolist()
    return {
        "thresholds": thr.tolist(),
        "top1_full": correct[-1].float().mean().item(),
        "top1_exit": hit.float().mean().item(),
        "drop_pts": 100 * (correct[-1].float().mean().item() - hit.float().mean().item()),
        "per_exit_top1": correct.float().mean(1).tolist(),
        "histogram": dict(zip([f"blocks.{b}" for b in st.exits] + ["final"], hist, strict=True)),
        "macs_ratio": compute_ratio(idx, costs),
    }


def calibrate(model: nn.Module, val_set, max_drop: float = 1.0) -> dict[str, Any]:
    """Set the single exit threshold with the most exits whose top-1 drop on ``val_set`` is ≤ ``max_drop``
    points vs the model's own head (recorded in the early_exit step, so a saved artifact keeps it)."""
    st = state(model)
    scores, correct, _ = exit_table(model, val_set)
    t, info = calibrate_threshold(scores, correct, float(max_drop))
    set_threshold(model, t)
    idx, _ = simulate(scores, correct, torch.full((len(st.exits),), t))
    info = {
        "threshold": t,
        "max_drop": float(max_drop),
        "images": int(scores.shape[1]),
        "top1_full": info["top1_full"],
        "top1_exit": info["top1_exit"],
        "drop_pts": round(info["drop_pts"], 4),
        "histogram": dict(zip([f"blocks.{b}" for b in st.exits] + ["final"], info["exits"], strict=True)),
        "macs_ratio": round(compute_ratio(idx, torch.tensor(exit_costs(model), dtype=torch.float64)), 4),
    }
    _log.info("calibrated exit threshold %.4f: drop %.2f pts, histogram %s", t, info["drop_pts"], info["histogram"])
    return info
