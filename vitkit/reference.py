"""The reference model: a preset ViT trained on bundled real data, saved as an artifact."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import torch

from .training import TrainConfig, evaluate_top1, train_classifier

_log = logging.getLogger(__name__)

#: Training recipe of the reference model (chosen by measurement; see BENCHMARKS.md).
REFERENCE_TRAIN = TrainConfig(epochs=36, batch_size=32, lr=1e-3, weight_decay=0.05, label_smoothing=0.1, shift=2.0)


def reference_key(preset: str = "vitkit_mnist_tiny") -> str:
    """Short hash of everything that shapes the reference model, so a changed recipe never reuses a stale cache."""
    import hashlib
    import json

    from ._version import __version__
    from .models.presets import PRESETS

    shape = {k: v for k, v in PRESETS[preset].items() if k != "doc"}
    # options added to TrainConfig later with an empty default (lr_scales) leave the key, so the cache stays valid
    train = {k: v for k, v in dataclasses.asdict(REFERENCE_TRAIN).items() if v != ()}
    blob = json.dumps([shape, train, __version__], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def cache_dir() -> Path:
    base = os.environ.get("VITKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vitkit"
    )
    return Path(base)


def train_reference(
    out: str | Path,
    *,
    data: str = "mnist5k",
    preset: str = "vitkit_mnist_tiny",
    epochs: int | None = None,
    seed: int = 0,
    threads: int | None = 2,
    progress=None,
) -> tuple[Path, dict]:
    """Train ``preset`` on ``data`` (train split, val monitored), evaluate on test, save an artifact."""
    from .artifact import save_artifact
    from .bench.env import environment
    from .data import load_dataset
    from .models import load

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = load(preset)
    train_set = load_dataset(data, "train", model=model)
    if train_set.num_classes > model.num_classes:
        from .errors import DataError

        raise DataError(f"{data} has {train_set.num_classes} classes but {preset} has {model.num_classes} outputs")
    cfg = dataclasses.replace(REFERENCE_TRAIN, seed=seed, threads=threads, epochs=epochs or REFERENCE_TRAIN.epochs)
    # validation is measured once at the end: per-epoch evaluation would cost ~7 % of the training time
    result = train_classifier(model, train_set, cfg, progress=progress)
    val_top1 = evaluate_top1(model, load_dataset(data, "val", model=model))
    test_top1 = evaluate_top1(model, load_dataset(data, "test", model=model))
    summary = {
        "preset": preset,
        "data": data,
        "test_top1": test_top1,
        "val_top1": val_top1,
        "train_seconds": round(result.seconds, 1),
        "train": dataclasses.asdict(cfg),
        "history": result.history,
    }
    report = {
        "env": environment(probe=False),
        "training": summary,
        "variants": [{"name": preset, "top1": test_top1}],
    }
    save_artifact(
        model,
        {"train": summary["train"], "data": data, "preset": preset},
        report,
        out,
        title=f"reference {preset} on {data}",
    )
    return Path(out), summary
