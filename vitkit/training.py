"""A small, deterministic classification trainer (used for the reference model and by tests).

AdamW + linear warm-up + cosine decay, label smoothing and random-shift augmentation. Later method
families (distillation, adaptation) build on :func:`train_classifier` rather than writing their own loop.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from .data import iterate_batches

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    shift: float = 2.0
    rotate: float = 0.0
    scale: float = 0.0
    seed: int = 0
    threads: int | None = None


@dataclass
class TrainResult:
    epochs: int
    seconds: float
    final_loss: float
    val_top1: float | None
    history: list[dict] = field(default_factory=list)


ProgressFn = Callable[[dict], None]


def evaluate_top1(model: nn.Module, dataset: Dataset, *, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for x, y in iterate_batches(dataset, batch_size):
            correct += int((model(x).argmax(-1) == y).sum())
            total += int(y.numel())
    model.train(was_training)
    return correct / max(total, 1)


def train_classifier(
    model: nn.Module,
    train_set: Dataset,
    cfg: TrainConfig = TrainConfig(),
    *,
    val_set: Dataset | None = None,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train ``model`` in place with cross-entropy; deterministic for a given ``cfg.seed`` and thread count."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warm = max(1, int(cfg.warmup_epochs * steps_per_epoch))

    def lr_at(step: int) -> float:
        if step < warm:
            return cfg.lr * (step + 1) / warm
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    start, step, loss_ema = time.perf_counter(), 0, float("nan")
    history: list[dict] = []
    model.train()
    for epoch in range(cfg.epochs):
        correct = seen = 0
        for x, y in iterate_batches(
            train_set,
            cfg.batch_size,
            shuffle=True,
            seed=cfg.seed * 1000 + epoch,
            augment_shift=cfg.shift,
            augment_rotate=cfg.rotate,
            augment_scale=cfg.scale,
        ):
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_ema = loss.item() if math.isnan(loss_ema) else 0.9 * loss_ema + 0.1 * loss.item()
            correct += int((logits.argmax(-1) == y).sum())
            seen += int(y.numel())
            if progress:
                progress({"epoch": epoch, "step": step, "total": total, "loss": loss_ema, "train_acc": correct / seen})
        record = {"epoch": epoch + 1, "loss": loss_ema, "train_acc": correct / max(seen, 1)}
        if val_set is not None:
            record["val_top1"] = evaluate_top1(model, val_set)
        history.append(record)
        _log.info("epoch %d: %s", epoch + 1, record)
    model.eval()
    val = history[-1].get("val_top1") if history else None
    return TrainResult(cfg.epochs, time.perf_counter() - start, loss_ema, val, history)
