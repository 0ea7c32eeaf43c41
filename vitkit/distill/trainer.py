"""``DistillConfig`` and :func:`distill`: recover a (pruned) student from a teacher with the shared loop.

The loop is :func:`vitkit.training.fit` (one loop in vitkit); this file only builds the loss: soft KD,
DeiT hard distillation (on the distillation-token head when the student has one), NKD, an optional feature
term, and TinyViT cached top-k teacher targets instead of a live teacher.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..configs import TransformConfig
from ..errors import ConfigError
from ..registry import register_transform
from ..training import TrainConfig, fit
from ..validate import check_choice, check_int, check_number
from . import losses as L

_log = logging.getLogger(__name__)

#: Progress callback for distill steps run inside :func:`vitkit.apply_` / recipes (see :func:`progress_to`).
_PROGRESS: contextvars.ContextVar[Callable[[dict], None] | None] = contextvars.ContextVar(
    "distill_progress", default=None
)


@contextlib.contextmanager
def progress_to(fn: Callable[[dict], None] | None) -> Iterator[None]:
    """Within the block, ``distill`` steps report each training step to ``fn`` (the library is silent otherwise).

    ``fn`` gets ``{"epoch", "step", "total", "loss", "train_acc", "stage"}`` — the CLI drives a rich bar with it.
    """
    token = _PROGRESS.set(fn)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


#: The training loop's settings for distillation (``DistillConfig.train``): one short epoch, small lr, no warm-up.
DISTILL_TRAIN = TrainConfig(epochs=1, batch_size=32, lr=2e-4, weight_decay=0.05, warmup_epochs=0.0, label_smoothing=0.0)
#: Keys version 1 of DistillConfig held flat; version 2 nests them under ``train``.
_FLAT_TRAIN_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "shift", "rotate", "scale", "seed")


@dataclass(frozen=True)
class DistillConfig(TransformConfig):
    """Knowledge-distillation recovery (fine-tune the model against a teacher).

    ``teacher``: ``original`` (the model before its first ``prune`` step in this run) or anything
    ``vitkit.load`` takes. ``loss``: ``soft`` (τ²·KL, ``temperature``), ``hard`` (DeiT: CE to the teacher's
    argmax) or ``nkd`` (normalized KD, ``gamma``); ``alpha``: weight of the KD term, ``1 − alpha`` goes to
    label cross-entropy (DeiT: 0.5; 1.0 = pure KD, labels unused). ``feature_weight``: MSE between the
    final features of student and teacher. ``cache_dir``: store/reuse the teacher's top-``topk`` probabilities
    there (TinyViT) so repeated recoveries skip the teacher. ``data``/``split``/``limit``: training images.
    ``checkpoint_dir``/``checkpoint_every``/``resume``: exact-resume checkpoints. ``optimizer``: ``adamw`` or
    a timm optimizer name (``adan``, ``lamb`` ...). ``train``: the loop's :class:`~vitkit.training.TrainConfig`
    (epochs, batch_size, lr, warm-up, augmentation, seed, threads; YAML ``train: {epochs: 3}``).
    """

    version: ClassVar[int] = 2
    loss: str = "soft"
    temperature: float = 1.0
    alpha: float = 1.0
    gamma: float = 1.5
    feature_weight: float = 0.0
    teacher: str = "original"
    data: str = "mnist5k"
    split: str = "train"
    limit: int | None = None
    generic_epochs: int = 0
    cache_dir: str | None = None
    topk: int = 10
    optimizer: str = "adamw"
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    resume: bool = False
    train: TrainConfig = field(default_factory=lambda: DISTILL_TRAIN)

    @classmethod
    def migrate(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """Version 1 held the training settings flat (``epochs: 3``); they now live under ``train``."""
        flat = {k: data.pop(k) for k in (*_FLAT_TRAIN_KEYS, "threads") if k in data}
        if flat:
            data["train"] = {**dict(data.get("train") or {}), **flat}
        return data

    def validate(self) -> None:
        n = type(self).__name__
        check_choice(self.loss, f"{n}.loss", L.LOSSES)
        check_int(self.train.epochs, f"{n}.train.epochs", low=1)
        check_int(self.topk, f"{n}.topk", low=1)
        check_int(self.generic_epochs, f"{n}.generic_epochs", low=0, why=" (G2SD feature stage)")
        check_number(self.alpha, f"{n}.alpha", low=0.0, high=1.0)
        check_number(self.temperature, f"{n}.temperature", low=0.0, low_open=True)
        check_number(self.feature_weight, f"{n}.feature_weight", low=0.0)
        if self.resume and not self.checkpoint_dir:
            raise ConfigError(f"{n}.resume needs checkpoint_dir")
        check_int(self.limit, f"{n}.limit", low=1, optional=True)


def _split_outputs(out) -> tuple[torch.Tensor, torch.Tensor]:
    """(class-token logits, logits to distil): DeiT distilled training returns ``(cls, dist)``."""
    if isinstance(out, tuple):
        return out[0], out[1]
    return out, out


def make_loss(cfg: DistillConfig, teacher: nn.Module | None, cache=None):
    """``loss_fn(net, x, y, where)`` for :func:`vitkit.training.fit`."""
    alpha = float(cfg.alpha)

    def loss_fn(net, x, y, where):
        epoch, _, start = where
        if cache is not None:
            probs = cache.lookup(epoch, start, x.shape[0])  # [B, C] dense soft targets at cfg.temperature
            t_logits = probs.clamp_min(1e-8).log() * cfg.temperature
            t_feat = None
        else:
            with torch.no_grad():
                if cfg.feature_weight > 0:
                    t_feat = teacher.forward_features(x)
                    t_logits = teacher.forward_head(t_feat)
                else:
                    t_feat, t_logits = None, teacher(x)
        if cfg.feature_weight > 0:
            if isinstance(net, nn.parallel.DistributedDataParallel):
                raise ConfigError("feature_weight > 0 is not supported under DDP yet: set feature_weight: 0")
            s_feat = net.forward_features(x)
            out = net.forward_head(s_feat)
        else:
            out = net(x)
        cls, dist = _split_outputs(out)
        if cfg.loss == "soft":
            kd = (
                L.soft_target_ce(dist, probs, cfg.temperature)
                if cache is not None
                else L.soft_kd(dist, t_logits, cfg.temperature)
            )
        elif cfg.loss == "hard":
            kd = L.hard_kd(dist, t_logits)
        else:
            kd = L.nkd(dist, t_logits, y, cfg.temperature, cfg.gamma)
        loss = alpha * kd
        if alpha < 1:
            loss = loss + (1 - alpha) * F.cross_entropy(cls, y)
        if cfg.feature_weight > 0 and t_feat is not None:
            loss = loss + cfg.feature_weight * L.feature_kd(s_feat, t_feat)
        return loss, (cls + dist) / 2 if dist is not cls else cls

    return loss_fn


def _with_stage(progress, stage: str):
    if progress is None:
        return None
    return lambda s: progress(dict(s, stage=stage))


def generic_feature_loss(teacher: nn.Module):
    """G2SD stage 1 (generic): MSE between student and teacher hidden features of *every* token.

    G2SD (Huang et al., CVPR 2023, §3.2) predicts the MAE teacher's features of visible and masked tokens with a
    decoder; we match the final-norm token features ``forward_features`` → ``[B, N, D]`` directly (no masking,
    no decoder: the pruned student keeps the teacher's embedding width, so no projector is needed).
    """

    def loss_fn(net, x, y, where):
        with torch.no_grad():
            t_feat = teacher.forward_features(x)  # [B, N, D]
        if isinstance(net, nn.parallel.DistributedDataParallel):
            raise ConfigError("generic_epochs > 0 is not supported under DDP yet: set generic_epochs: 0")
        s_feat = net.forward_features(x)
        if s_feat.shape != t_feat.shape:
            raise ConfigError(
                f"student features {tuple(s_feat.shape)} differ from the teacher's {tuple(t_feat.shape)}: "
                "generic (feature) distillation needs the same token count and width; set generic_epochs: 0"
            )
        out = net.forward_head(s_feat)
        cls, dist = _split_outputs(out)
        return L.feature_kd(s_feat, t_feat), (cls + dist) / 2 if dist is not cls else cls

    return loss_fn


def _stage_dir(checkpoint_dir: str | None, stage: str, two_stage: bool) -> str | None:
    if not checkpoint_dir or not two_stage:
        return checkpoint_dir
    from pathlib import Path

    return str(Path(checkpoint_dir) / stage)


def _logit_cache(student: nn.Module, teacher: nn.Module | None, train_set, cfg: DistillConfig):
    """TinyViT's cache: the teacher's top-k logits for every (epoch, batch) the loop will replay, built (or
    reused) in ``cfg.cache_dir`` before training."""
    from ..training import epoch_batches
    from .cache import LogitCache, fingerprint

    if cfg.feature_weight > 0:
        raise ConfigError("the logit cache stores logits only: set feature_weight: 0 or drop cache_dir")
    num_classes = int(getattr(student, "num_classes", 0))
    cache = LogitCache(cfg.cache_dir, k=cfg.topk, temperature=cfg.temperature, num_classes=num_classes)
    header = {"seed": cfg.train.seed, "batch_size": cfg.train.batch_size, "n": len(train_set), "limit": cfg.limit}
    for epoch in range(cfg.train.epochs):
        batches = epoch_batches(train_set, cfg.train, epoch, limit=cfg.limit)  # the stream fit() will replay
        if teacher is None:
            break
        header["teacher"] = fingerprint(teacher)
        cache.build(teacher, batches, epoch, header)
    return cache


def distill(
    student: nn.Module, teacher: nn.Module | None, train_set, cfg: DistillConfig, *, progress=None
) -> dict[str, Any]:
    """Train ``student`` in place against ``teacher`` (or ``cfg.cache_dir``); returns a JSON-able summary.

    With ``cfg.generic_epochs`` > 0 it runs G2SD's two stages: first ``generic_epochs`` of feature
    distillation on all tokens (:func:`generic_feature_loss`, own warm-up/cosine schedule), then ``epochs`` of
    the task-specific KD. ``progress`` (or the callback installed by :func:`progress_to`) gets every step.
    """
    from pathlib import Path

    progress = progress or _PROGRESS.get()
    tcfg = cfg.train
    if teacher is not None:  # runs under no_grad in the loss; its parameters' flags are left untouched
        teacher.eval()
    two_stage = cfg.generic_epochs > 0
    if two_stage and teacher is None:
        raise ConfigError("generic_epochs > 0 needs a live teacher (features are not cached): pass the teacher")
    t0 = time.perf_counter()
    cache = _logit_cache(student, teacher, train_set, cfg) if cfg.cache_dir else None
    cache_seconds = time.perf_counter() - t0 if cache is not None else 0.0
    distilled = hasattr(student, "set_distilled_training") and getattr(student, "dist_token", None) is not None
    if distilled:
        student.set_distilled_training(True)
    generic_seconds = 0.0
    try:
        resume_specific = cfg.resume
        if two_stage:
            gdir = _stage_dir(cfg.checkpoint_dir, "generic", True)
            sdir = _stage_dir(cfg.checkpoint_dir, "specific", True)
            from ..training.checkpoint import META

            resume_specific = cfg.resume and sdir is not None and (Path(sdir) / META).is_file()
            g = fit(
                student,
                train_set,
                replace_epochs(tcfg, cfg.generic_epochs),
                loss_fn=generic_feature_loss(teacher),
                optimizer=cfg.optimizer,
                progress=_with_stage(progress, "generic"),
                checkpoint_dir=gdir,
                checkpoint_every=cfg.checkpoint_every,
                resume=cfg.resume and not resume_specific,
                limit=cfg.limit,
            )
            generic_seconds = g.seconds
            if distilled:
                student.set_distilled_training(True)  # fit() leaves the model in eval mode
        res = fit(
            student,
            train_set,
            tcfg,
            loss_fn=make_loss(cfg, teacher, cache),
            optimizer=cfg.optimizer,
            progress=_with_stage(progress, "specific" if two_stage else "kd"),
            checkpoint_dir=_stage_dir(cfg.checkpoint_dir, "specific", two_stage),
            checkpoint_every=cfg.checkpoint_every,
            resume=resume_specific,
            limit=cfg.limit,
        )
    finally:
        if distilled:
            student.set_distilled_training(False)
    per_epoch = len(train_set) if cfg.limit is None else min(cfg.limit, len(train_set))
    epochs = cfg.train.epochs + cfg.generic_epochs
    return {
        "epochs": cfg.train.epochs,
        "generic_epochs": cfg.generic_epochs,
        "images_seen": epochs * per_epoch,
        "steps": epochs * -(-per_epoch // cfg.train.batch_size),
        "seconds": round(res.seconds + generic_seconds, 2),
        "generic_seconds": round(generic_seconds, 2),
        "cache_seconds": round(cache_seconds, 2),
        "final_loss": float(res.final_loss),
    }


def replace_epochs(tcfg: TrainConfig, epochs: int) -> TrainConfig:
    import dataclasses

    return dataclasses.replace(tcfg, epochs=epochs)


def resolve_teacher(model: nn.Module, cfg: DistillConfig) -> nn.Module | None:
    from ..history import original_model as unpruned_teacher

    if cfg.teacher == "original":
        teacher = unpruned_teacher(model)
        if teacher is None and not cfg.cache_dir:
            raise ConfigError(
                "teacher='original' needs a prune step earlier in the same run; "
                "or set teacher to a model name / artifact dir"
            )
        return teacher
    from ..models import load

    return load(cfg.teacher)


@register_transform(
    DistillConfig,
    name="distill",
    kind="weights",
    paper="DeiT (Touvron et al., ICML 2021) / NKD / TinyViT",
    example=lambda workdir: {"teacher": str(workdir / "model"), "limit": 8, "train": {"epochs": 1, "batch_size": 8}},
)
def apply_distill(model: nn.Module, cfg: DistillConfig, *, calib=None, dry_run: bool = False) -> dict[str, Any]:
    """Fine-tune ``model`` in place by distillation (a weights step: nothing to replay when loading)."""
    from ..data import load_dataset

    if dry_run:
        return {"summary": f"would distil {cfg.train.epochs} epoch(s) of {cfg.data}/{cfg.split} with {cfg.loss} KD"}
    teacher = resolve_teacher(model, cfg)
    train_set = load_dataset(cfg.data, cfg.split, model=model)
    out = distill(model, teacher, train_set, cfg)
    out["summary"] = f"{cfg.loss} KD: {out['images_seen']} images in {out['seconds']}s, loss {out['final_loss']:.4f}"
    return out
