"""Fine-tuning an adapted model on :func:`vitkit.training.fit`, SlimFit-style freezing, training memory.

* :func:`finetune` trains only the parameters that require grad (what an adaptation step left trainable)
  with vitkit's one training loop, optionally with :class:`SlimFitConfig` freezing and a memory meter.
* SlimFit — Ardakani et al., "SlimFit: Memory-Efficient Fine-Tuning of Transformer-based Models Using
  Training Dynamics" (2023), §3 inter-layer scheduling: every ``interval`` steps the trainable layers are
  ranked by how much their weights moved since the last check (``‖W_t − W_{t−k}‖ / ‖W_{t−k}‖``) and the
  ``ratio`` fraction that moved least is frozen until the next check (frozen layers keep their last
  score, so they can come back). From step 0 the earliest ``ratio`` of the layers are frozen (no dynamics
  known yet), so the fraction is frozen at every step and the *peak* memory drops. Frozen layers need no
  weight gradients and their linears save no input activations. Deliberate differences: we freeze whole
  ``nn.Linear`` layers only (not norms/embeddings), start from the earliest layers rather than from a
  measured schedule, and SlimFit's quantization/pruning of the "static" activations is not implemented.
* ``finetune`` is also a registered *weights* step (:class:`FineTuneConfig`), so a recipe can run
  ``lora → finetune → lora_merge``.
* LoRA+ — Hayou, Ghosh & Yu, "LoRA+: Efficient Low Rank Adaptation of Large Models" (ICML 2024), §3:
  train ``B`` with a larger learning rate than ``A``, ``η_B = λ·η_A`` (they suggest λ = 2⁴). Here it is
  :func:`lora_plus_scales` → ``TrainConfig.lr_scales`` (one lr multiplier per parameter-name glob), or
  ``FineTuneConfig.lora_plus`` in a recipe; the head and any other trainable parameter keep ``η``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ..configs import TransformConfig, select_names
from ..errors import ConfigError, DataError
from ..registry import register_transform
from ..training import TrainConfig, TrainResult, ce_loss, fit
from .common import trainable_summary

_log = logging.getLogger(__name__)


def lora_plus_scales(ratio: float = 16.0) -> tuple[tuple[str, float], ...]:
    """LoRA+ (Hayou et al., 2024, §3): ``η_B = ratio · η_A`` as ``TrainConfig.lr_scales`` (ratio 1 = plain LoRA)."""
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not ratio > 0:
        raise ConfigError(f"LoRA+ ratio must be a positive number, got {ratio!r}")
    return () if float(ratio) == 1.0 else (("*.lora_B", float(ratio)),)


@dataclass(frozen=True)
class SlimFitConfig(TransformConfig):
    """Freeze the ``ratio`` fraction of trainable linear layers (``targets``: globs over linear names,
    default ``blocks.*``) whose weights moved least, re-decided every ``interval`` steps after ``warmup``."""

    ratio: float = 0.5
    interval: int = 10
    warmup: int = 10

    def validate(self) -> None:
        if not 0.0 <= float(self.ratio) < 1.0:
            raise ConfigError(f"SlimFitConfig.ratio must be in [0, 1), got {self.ratio!r}")
        for name in ("interval", "warmup"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "interval" else 0):
                raise ConfigError(f"SlimFitConfig.{name} must be an int >= {int(name == 'interval')}, got {v!r}")


class SlimFitFreezer:
    """Call :meth:`step` after every optimizer step (``fit``'s progress callback does)."""

    def __init__(self, model: nn.Module, cfg: SlimFitConfig) -> None:
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.weight.requires_grad]
        if not names:
            raise ConfigError("SlimFit found no trainable nn.Linear layers to schedule")
        targets = cfg.targets if cfg.targets is not None else ("blocks.*",)
        self.names = select_names(names, targets, cfg.skip, what="trainable linear layers")
        self.cfg = cfg
        self.layers = {n: model.get_submodule(n) for n in self.names}
        self.prev = {n: m.weight.detach().clone() for n, m in self.layers.items()}
        self.score = dict.fromkeys(self.names, float("inf"))
        self.history: list[int] = []  # frozen layer count at each check
        # before any dynamics are known, freeze the earliest layers (they move least in fine-tuning); their
        # score stays unknown (inf), so the first check brings them back and freezes measured ones instead
        self.frozen = set(self.names[: int(cfg.ratio * len(self.names))])
        for n in self.frozen:
            self._set(n, False)

    def _set(self, name: str, trainable: bool) -> None:
        for p in self.layers[name].parameters(recurse=False):
            p.requires_grad_(trainable)

    def step(self, step: int) -> None:
        c = self.cfg
        if step < c.warmup or (step - c.warmup) % c.interval:
            return
        for n, m in self.layers.items():
            w = m.weight.detach()
            if n not in self.frozen:
                self.score[n] = float((w - self.prev[n]).norm() / self.prev[n].norm().clamp_min(1e-12))
            self.prev[n] = w.clone()
        k = int(c.ratio * len(self.names))
        ranked = sorted(self.names, key=lambda n: self.score[n])
        new = set(ranked[:k])
        for n in self.names:
            self._set(n, n not in new)
        self.frozen = new
        self.history.append(len(new))

    def release(self) -> None:
        """Unfreeze every scheduled layer (end of training)."""
        for n in self.names:
            self._set(n, True)
        self.frozen = set()


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
@dataclass(frozen=True)
class FineTuneConfig(TransformConfig):
    """Fine-tune the trainable parameters on a dataset (``vitkit.data.load_dataset`` name) inside a recipe.
    ``num_classes``: replace the classifier with a fresh one first (a new label space); ``slimfit``: SlimFit
    freezing ratio (0 = off); ``limit``: train on the first N samples of each epoch's shuffled order;
    ``lora_plus``: LoRA+ ratio η_B/η_A for LoRA's B factors (1 = plain LoRA)."""

    data: str = "digits"
    split: str = "train"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    num_classes: int | None = None
    slimfit: float = 0.0
    limit: int | None = None
    seed: int = 0
    lora_plus: float = 1.0

    def validate(self) -> None:
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"FineTuneConfig.{name} must be a positive int, got {v!r}")
        if not float(self.lr) > 0:
            raise ConfigError(f"FineTuneConfig.lr must be positive, got {self.lr!r}")
        if self.num_classes is not None and (not isinstance(self.num_classes, int) or self.num_classes <= 1):
            raise ConfigError(f"FineTuneConfig.num_classes must be an int >= 2 or null, got {self.num_classes!r}")
        SlimFitConfig(ratio=self.slimfit)
        if self.limit is not None and (
            isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1
        ):
            raise ConfigError(f"FineTuneConfig.limit must be a positive int or null, got {self.limit!r}")
        lora_plus_scales(self.lora_plus)

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=float(self.lr),
            weight_decay=float(self.weight_decay),
            label_smoothing=float(self.label_smoothing),
            seed=int(self.seed),
            lr_scales=lora_plus_scales(self.lora_plus),
        )


def _reset_head(model: nn.Module, cfg: FineTuneConfig) -> None:
    if cfg.num_classes is not None and cfg.num_classes != model.num_classes:
        model.reset_classifier(cfg.num_classes)


@register_transform(
    FineTuneConfig,
    name="finetune",
    kind="weights",
    paper="SlimFit (Ardakani et al., 2023) for optional freezing",
    restore=lambda model, cfg, decisions: _reset_head(model, cfg),
)
def finetune_step(model: nn.Module, cfg: FineTuneConfig, *, calib=None, dry_run: bool = False) -> dict:
    from ..data import load_dataset

    data = load_dataset(cfg.data, cfg.split, model=model)
    n_classes = cfg.num_classes or int(model.num_classes)
    top = int(getattr(data, "num_classes", 0)) - 1
    if top >= n_classes:
        raise DataError(f"{cfg.data} has labels up to {top} but the model has {n_classes} classes: set num_classes")
    if dry_run:
        return {"images": len(data), "summary": f"fine-tune {cfg.epochs} epochs on {cfg.data}/{cfg.split}"}
    _reset_head(model, cfg)
    slim = SlimFitConfig(ratio=float(cfg.slimfit)) if cfg.slimfit > 0 else None
    res = finetune(model, data, cfg.train_config(), slimfit=slim, limit=cfg.limit)
    return {
        "images": len(data) if cfg.limit is None else min(cfg.limit, len(data)),
        "trainable": res.trainable,
        "final_loss": round(float(res.train.final_loss), 5),
        "seconds": round(res.train.seconds, 2),
        "summary": f"fine-tuned {res.trainable['trainable']} params for {cfg.epochs} epochs on {cfg.data}",
    }
