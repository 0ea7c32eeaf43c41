"""A small, deterministic classification trainer (used for the reference model and by tests).

AdamW + linear warm-up + cosine decay, label smoothing and random-shift augmentation. Later method
families (distillation, adaptation) build on :func:`train_classifier` rather than writing their own loop.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..data import iterate_batches

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
    #: ``((glob over parameter names, lr multiplier), ...)``: the first matching glob scales that parameter's
    #: learning rate (warm-up and cosine follow); e.g. LoRA+ is ``(("*.lora_B", 16.0),)``
    lr_scales: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        """Validate (one-line :class:`ConfigError` naming the field); YAML lists become tuples so it stays hashable."""
        from ..validate import check_int, check_number

        object.__setattr__(self, "lr_scales", tuple((str(g), float(m)) for g, m in self.lr_scales))
        check_int(self.epochs, "TrainConfig.epochs", low=0)
        check_int(self.batch_size, "TrainConfig.batch_size", low=1)
        check_number(self.lr, "TrainConfig.lr", low=0.0, low_open=True)
        for name in ("weight_decay", "warmup_epochs", "shift", "rotate", "scale"):
            check_number(getattr(self, name), f"TrainConfig.{name}", low=0.0)
        check_number(self.label_smoothing, "TrainConfig.label_smoothing", low=0.0, high=1.0, high_open=True)
        check_int(self.seed, "TrainConfig.seed")
        check_int(self.threads, "TrainConfig.threads", low=1, optional=True)

    def to_dict(self) -> dict:
        return {k: [list(p) for p in v] if k == "lr_scales" else v for k, v in dataclasses.asdict(self).items()}


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


def epoch_batches(train_set: Dataset, cfg: TrainConfig, epoch: int, *, limit: int | None = None):
    """The training batches of ``epoch``: order and augmentation are a pure function of (cfg.seed, epoch),
    so a resumed run and a logit cache built ahead of training see exactly the same stream."""
    return iterate_batches(
        train_set,
        cfg.batch_size,
        shuffle=True,
        seed=cfg.seed * 1000 + epoch,
        augment_shift=cfg.shift,
        augment_rotate=cfg.rotate,
        augment_scale=cfg.scale,
        limit=limit,
    )


def train_classifier(
    model: nn.Module,
    train_set: Dataset,
    cfg: TrainConfig = TrainConfig(),
    *,
    val_set: Dataset | None = None,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train ``model`` in place with cross-entropy; deterministic for a given ``cfg.seed`` and thread count."""
    return fit(model, train_set, cfg, val_set=val_set, progress=progress)


#: ``loss_fn(model, x, y, batch_index) -> (loss, logits)``; ``batch_index`` = (epoch, batch in epoch, first sample).
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, tuple[int, int, int]], tuple[torch.Tensor, torch.Tensor]]


def ce_loss(cfg: TrainConfig) -> LossFn:
    def loss_fn(model, x, y, where):
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing), logits

    return loss_fn


def make_optimizer(
    named_params: list[tuple[str, nn.Parameter]], cfg: TrainConfig, name: str = "adamw"
) -> torch.optim.Optimizer:
    """AdamW (torch) with no decay on biases/norms; other names through ``timm.optim`` (``adan``, ``lamb``...).
    ``cfg.lr_scales`` puts matching parameters in groups whose ``lr_scale`` multiplies the scheduled lr."""
    from ..errors import ConfigError

    def scale_of(param_name: str) -> float:
        for pattern, factor in cfg.lr_scales:
            if fnmatch.fnmatchcase(param_name, pattern):
                return float(factor)
        return 1.0

    for pattern, factor in cfg.lr_scales:
        if not float(factor) > 0:
            raise ConfigError(f"TrainConfig.lr_scales: factor for {pattern!r} must be positive, got {factor!r}")
        if not any(fnmatch.fnmatchcase(n, pattern) for n, _ in named_params):
            raise ConfigError(f"TrainConfig.lr_scales: {pattern!r} matches no trainable parameter; check the glob")
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for n, p in named_params:
        groups.setdefault((p.ndim >= 2, scale_of(n)), []).append(p)
    groups = [
        {"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0, "lr_scale": scale}
        for (decay, scale), ps in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))
    ]
    if name.lower() == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    from timm.optim import create_optimizer_v2, list_optimizers

    if name.lower() not in list_optimizers():
        raise ConfigError(f"unknown optimizer {name!r}; use 'adamw' or a timm optimizer name, e.g. 'adan', 'lamb'")
    return create_optimizer_v2(groups, opt=name.lower(), lr=cfg.lr)


#: Where a fresh run starts (a resumed one reads these from its checkpoint).
FRESH_STATE = {"step": 0, "loss_ema": float("nan"), "epoch": 0, "batch": 0, "correct": 0, "seen": 0}


def warmup_cosine(cfg: TrainConfig, steps_per_epoch: int) -> tuple[Callable[[int], float], int]:
    """(lr at step, total steps): linear warm-up over ``cfg.warmup_epochs`` then cosine decay to 0."""
    total = cfg.epochs * steps_per_epoch
    warm = max(1, int(cfg.warmup_epochs * steps_per_epoch))

    def lr_at(step: int) -> float:
        if step < warm:
            return cfg.lr * (step + 1) / warm
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return lr_at, total


def _start_state(resume: bool, checkpoint_dir: str | None, model: nn.Module, opt) -> dict:
    """:data:`FRESH_STATE`, or when resuming the state saved in ``checkpoint_dir`` (model and optimizer restored)."""
    if not resume:
        return dict(FRESH_STATE, history=[])
    from . import checkpoint as ckpt

    state = ckpt.load_training_state(checkpoint_dir, model, opt)
    _log.info("resumed from %s at step %d (epoch %d, batch %d)", checkpoint_dir, *map(state.get, STATE_KEYS))
    return state


STATE_KEYS = ("step", "epoch", "batch")


def fit(
    model: nn.Module,
    train_set: Dataset,
    cfg: TrainConfig = TrainConfig(),
    *,
    loss_fn: LossFn | None = None,
    optimizer: str = "adamw",
    val_set: Dataset | None = None,
    progress: ProgressFn | None = None,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    limit: int | None = None,
) -> TrainResult:
    """The one training loop: ``loss_fn`` (default cross-entropy) + AdamW/timm optimizer + warm-up/cosine.

    ``checkpoint_every`` > 0 writes ``checkpoint_dir`` (safetensors + JSON, no pickle) every N steps and at
    the end; ``resume=True`` continues from it exactly (model, optimizer, RNG, position in the epoch).
    Under ``torchrun`` (an initialised ``torch.distributed`` group) the model is wrapped in
    DistributedDataParallel and each rank takes an equal slice of every global batch (``cfg.batch_size``),
    so the result matches a single process with the same global batch. ``limit``: use the first N samples
    of each epoch's shuffled order.
    """
    from . import checkpoint as ckpt
    from .distributed import DistContext

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    dist = DistContext.current(cfg.batch_size)
    loss_fn = loss_fn or ce_loss(cfg)
    opt = make_optimizer([(n, p) for n, p in model.named_parameters() if p.requires_grad], cfg, optimizer)
    n_samples = len(train_set) if limit is None else min(limit, len(train_set))
    lr_at, total = warmup_cosine(cfg, math.ceil(n_samples / cfg.batch_size))
    start = time.perf_counter()
    state = _start_state(resume, checkpoint_dir, model, opt)
    step, loss_ema, history = state["step"], state["loss_ema"], state["history"]
    first_epoch, skip, correct, seen = state["epoch"], state["batch"], state["correct"], state["seen"]
    net = dist.wrap(model)

    def save() -> None:
        if checkpoint_dir and dist.is_main:
            pos = {"step": step, "epoch": epoch, "batch": batch + 1, "loss_ema": loss_ema, "correct": correct}
            ckpt.save_training_state(checkpoint_dir, model, opt, dict(pos, seen=seen, history=history, total=total))

    model.train()
    for epoch in range(first_epoch, cfg.epochs):
        if epoch != first_epoch:
            correct = seen = 0
        batches = epoch_batches(train_set, cfg, epoch, limit=limit)
        for batch, (x, y) in enumerate(batches):
            if epoch == first_epoch and batch < skip:
                continue  # resuming: the batch stream (and its augmentation RNG) is replayed, not trained
            for group in opt.param_groups:
                group["lr"] = lr_at(step) * group.get("lr_scale", 1.0)
            xs, ys, weight = dist.shard(x, y)
            loss, logits = loss_fn(net, xs, ys, (epoch, batch, batch * cfg.batch_size + dist.offset(x.shape[0])))
            opt.zero_grad(set_to_none=True)
            (loss * weight).backward()
            opt.step()
            step += 1
            loss_ema = loss.item() if math.isnan(loss_ema) else 0.9 * loss_ema + 0.1 * loss.item()
            correct += int((logits.argmax(-1) == ys).sum())
            seen += int(ys.numel())
            if progress:
                progress({"epoch": epoch, "step": step, "total": total, "loss": loss_ema, "train_acc": correct / seen})
            if checkpoint_every and step % checkpoint_every == 0:
                save()
        record = {"epoch": epoch + 1, "loss": loss_ema, "train_acc": correct / max(seen, 1)}
        if val_set is not None:
            record["val_top1"] = dist.evaluate(model, val_set) if dist.world > 1 else evaluate_top1(model, val_set)
        history.append(record)
        _log.info("epoch %d: %s", epoch + 1, record)
    if checkpoint_every and checkpoint_dir and dist.is_main:
        epoch, batch = cfg.epochs, -1
        save()
    model.eval()
    val = history[-1].get("val_top1") if history else None
    return TrainResult(cfg.epochs, time.perf_counter() - start, loss_ema, val, history)
