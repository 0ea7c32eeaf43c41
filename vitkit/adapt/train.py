"""Fine-tuning an adapted model on :func:`vitkit.training.fit`, SlimFit-style freezing, training memory.

* :func:`finetune` trains only the parameters that require grad (what an adaptation step left trainable)
  with vitkit's one training loop, optionally with :class:`SlimFitConfig` freezing and a memory meter.
* SlimFit freezing lives in :mod:`vitkit.adapt.slimfit`.
* ``finetune`` is also a registered *weights* step (:class:`FineTuneConfig`), so a recipe can run
  ``lora → finetune → lora_merge``.
* LoRA+ — Hayou, Ghosh & Yu, "LoRA+: Efficient Low Rank Adaptation of Large Models" (ICML 2024), §3:
  train ``B`` with a larger learning rate than ``A``, ``η_B = λ·η_A`` (they suggest λ = 2⁴). Here it is
  :func:`lora_plus_scales` → ``TrainConfig.lr_scales`` (one lr multiplier per parameter-name glob), or
  ``FineTuneConfig.lora_plus`` in a recipe; the head and any other trainable parameter keep ``η``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ..configs import TransformConfig
from ..errors import ConfigError, DataError
from ..registry import register_transform
from ..training import TrainConfig, TrainResult, ce_loss, fit
from ..validate import check_int, check_number
from .common import trainable_summary
from .slimfit import SlimFitConfig, SlimFitFreezer

_log = logging.getLogger(__name__)


def lora_plus_scales(ratio: float = 16.0) -> tuple[tuple[str, float], ...]:
    """LoRA+ (Hayou et al., 2024, §3): ``η_B = ratio · η_A`` as ``TrainConfig.lr_scales`` (ratio 1 = plain LoRA)."""
    check_number(ratio, "LoRA+ ratio", low=0.0, low_open=True)
    return () if float(ratio) == 1.0 else (("*.lora_B", float(ratio)),)


class MemoryMeter:
    """Training memory counted tensor by tensor (allocator-independent): weights + gradients + AdamW state
    (2 moments per parameter that was ever trained) + activations saved for backward (unique storages,
    via ``torch.autograd.graph.saved_tensors_hooks``). :attr:`peak` is the maximum over steps, in bytes."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        self.ever_trained: set[int] = set()
        self.optim_bytes = 0
        self.peak = 0
        self.peak_parts: dict[str, int] = {}

    def wrap(self, loss_fn):
        def metered(model, x, y, where):
            params = [p for p in self.model.parameters() if p.requires_grad]
            param_ptrs = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
            saved: dict[int, int] = {}

            def pack(t: torch.Tensor):
                st = t.untyped_storage()
                if st.data_ptr() not in param_ptrs:
                    saved[st.data_ptr()] = st.nbytes()
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = loss_fn(model, x, y, where)
            for p in params:
                if id(p) not in self.ever_trained:
                    self.ever_trained.add(id(p))
                    self.optim_bytes += 2 * p.numel() * p.element_size()
            grads = sum(p.numel() * p.element_size() for p in params)
            parts = {
                "weights": self.param_bytes,
                "grads": grads,
                "optimizer": self.optim_bytes,
                "activations": sum(saved.values()),
            }
            total = sum(parts.values())
            if total > self.peak:
                self.peak, self.peak_parts = total, parts
            return out

        return metered

    def summary_mb(self) -> dict[str, float]:
        out = {k: round(v / 2**20, 3) for k, v in self.peak_parts.items()}
        out["total"] = round(self.peak / 2**20, 3)
        return out


@dataclass
class FineTuneResult:
    train: TrainResult
    trainable: dict
    memory_mb: dict[str, float] | None = None
    slimfit_frozen: list[int] = field(default_factory=list)


def finetune(
    model: nn.Module,
    train_set: Dataset,
    cfg: TrainConfig | None = None,
    *,
    val_set: Dataset | None = None,
    slimfit: SlimFitConfig | None = None,
    measure_memory: bool = False,
    progress=None,
    limit: int | None = None,
) -> FineTuneResult:
    """Train ``model``'s trainable parameters in place with :func:`vitkit.training.fit` (cross-entropy)."""
    cfg = cfg or TrainConfig()
    trainable = trainable_summary(model)
    if trainable["trainable"] == 0:
        raise ConfigError("model has no trainable parameters: add an adapter (LoRAConfig, ...) or unfreeze some")
    freezer = SlimFitFreezer(model, slimfit) if slimfit is not None and slimfit.ratio > 0 else None
    meter = MemoryMeter(model) if measure_memory else None
    loss_fn = ce_loss(cfg)
    if meter is not None:
        loss_fn = meter.wrap(loss_fn)

    def on_step(s: dict) -> None:
        if freezer is not None:
            freezer.step(int(s["step"]))
        if progress:
            progress(s)

    try:
        result = fit(model, train_set, cfg, loss_fn=loss_fn, val_set=val_set, progress=on_step, limit=limit)
    finally:
        if freezer is not None:
            freezer.release()
    return FineTuneResult(
        result,
        trainable,
        meter.summary_mb() if meter is not None else None,
        list(freezer.history) if freezer is not None else [],
    )


# -- the recipe step ---------------------------------------------------------------------------------------------
#: The training loop's settings for a recipe's fine-tuning step (``FineTuneConfig.train``).
FINETUNE_TRAIN = TrainConfig(epochs=10, batch_size=32, lr=1e-3, weight_decay=0.05, label_smoothing=0.1)
_FLAT_TRAIN_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "seed")


@dataclass(frozen=True)
class FineTuneConfig(TransformConfig):
    """Fine-tune the trainable parameters on a dataset (``vitkit.data.load_dataset`` name) inside a recipe.
    ``num_classes``: replace the classifier with a fresh one first (a new label space); ``slimfit``: SlimFit
    freezing ratio (0 = off); ``limit``: train on the first N samples of each epoch's shuffled order;
    ``lora_plus``: LoRA+ ratio η_B/η_A for LoRA's B factors (1 = plain LoRA); ``train``: the loop's
    :class:`~vitkit.training.TrainConfig` (YAML ``train: {epochs: 3, lr: 0.001}``)."""

    version: ClassVar[int] = 2
    data: str = "digits"
    split: str = "train"
    num_classes: int | None = None
    slimfit: float = 0.0
    limit: int | None = None
    lora_plus: float = 1.0
    train: TrainConfig = field(default_factory=lambda: FINETUNE_TRAIN)

    @classmethod
    def migrate(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """Version 1 held the training settings flat (``epochs: 3``); they now live under ``train``."""
        flat = {k: data.pop(k) for k in _FLAT_TRAIN_KEYS if k in data}
        if flat:
            data["train"] = {**dict(data.get("train") or {}), **flat}
        return data

    def validate(self) -> None:
        check_int(self.train.epochs, "FineTuneConfig.train.epochs", low=1)
        check_int(self.num_classes, "FineTuneConfig.num_classes", low=2, optional=True)
        SlimFitConfig(ratio=self.slimfit)
        check_int(self.limit, "FineTuneConfig.limit", low=1, optional=True)
        lora_plus_scales(self.lora_plus)

    def train_config(self) -> TrainConfig:
        """``train`` with LoRA+'s per-parameter lr multipliers added."""
        return dataclasses.replace(self.train, lr_scales=self.train.lr_scales + lora_plus_scales(self.lora_plus))


def _reset_head(model: nn.Module, cfg: FineTuneConfig) -> None:
    if cfg.num_classes is not None and cfg.num_classes != model.num_classes:
        model.reset_classifier(cfg.num_classes)


@register_transform(
    FineTuneConfig,
    name="finetune",
    kind="weights",
    paper="SlimFit (Ardakani et al., 2023) for optional freezing",
    restore=lambda model, cfg, decisions: _reset_head(model, cfg),
    example={"data": "digits", "limit": 8, "train": {"epochs": 1, "batch_size": 8}},
)
def apply_finetune(model: nn.Module, cfg: FineTuneConfig, *, calib=None, dry_run: bool = False) -> dict:
    from ..data import load_dataset

    data = load_dataset(cfg.data, cfg.split, model=model)
    n_classes = cfg.num_classes or int(model.num_classes)
    top = int(getattr(data, "num_classes", 0)) - 1
    if top >= n_classes:
        raise DataError(f"{cfg.data} has labels up to {top} but the model has {n_classes} classes: set num_classes")
    if dry_run:
        return {"images": len(data), "summary": f"fine-tune {cfg.train.epochs} epochs on {cfg.data}/{cfg.split}"}
    _reset_head(model, cfg)
    slim = SlimFitConfig(ratio=float(cfg.slimfit)) if cfg.slimfit > 0 else None
    res = finetune(model, data, cfg.train_config(), slimfit=slim, limit=cfg.limit)
    return {
        "images": len(data) if cfg.limit is None else min(cfg.limit, len(data)),
        "trainable": res.trainable,
        "final_loss": round(float(res.train.final_loss), 5),
        "seconds": round(res.train.seconds, 2),
        "summary": f"fine-tuned {res.trainable['trainable']} params for {cfg.train.epochs} epochs on {cfg.data}",
    }
