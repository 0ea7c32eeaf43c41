"""The one training loop (:func:`fit`) every family builds on, with resumable checkpoints and DDP.

:mod:`.loop` (``TrainConfig``, ``fit``, ``train_classifier``), :mod:`.checkpoint` (atomic save/resume of model +
optimizer state), :mod:`.distributed` (``torchrun`` process groups).
"""

from .loop import (
    LossFn,
    TrainConfig,
    TrainResult,
    ce_loss,
    epoch_batches,
    evaluate_top1,
    fit,
    make_optimizer,
    train_classifier,
)

__all__ = [
    "LossFn",
    "TrainConfig",
    "TrainResult",
    "ce_loss",
    "epoch_batches",
    "evaluate_top1",
    "fit",
    "make_optimizer",
    "train_classifier",
]
