"""SlimFit — Ardakani et al., "SlimFit: Memory-Efficient Fine-Tuning of Transformer-based Models Using Training
Dynamics" (2023), §3 inter-layer scheduling: every ``interval`` steps the trainable layers are ranked by how much
their weights moved since the last check (``‖W_t − W_{t−k}‖ / ‖W_{t−k}‖``) and the ``ratio`` fraction that moved
least is frozen until the next check (frozen layers keep their last score, so they can come back). From step 0
the earliest ``ratio`` of the layers are frozen (no dynamics known yet), so the fraction is frozen at every step
and the *peak* memory drops. Frozen layers need no weight gradients and their linears save no input activations.

Deliberate differences: we freeze whole ``nn.Linear`` layers only (not norms/embeddings), start from the earliest
layers rather than from a measured schedule, and SlimFit's quantization/pruning of the "static" activations is
not implemented. Used by :func:`vitkit.adapt.finetune` (``slimfit=``) and ``FineTuneConfig.slimfit``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from ..adapters import adapter_for
from ..configs import TransformConfig, select_names
from ..errors import ConfigError
from ..validate import check_int, check_number


@dataclass(frozen=True)
class SlimFitConfig(TransformConfig):
    """Freeze the ``ratio`` fraction of trainable linear layers (``targets``: globs over linear names,
    default: every linear inside a block) whose weights moved least, re-decided every ``interval`` steps after
    ``warmup``."""

    ratio: float = 0.5
    interval: int = 10
    warmup: int = 10

    def validate(self) -> None:
        check_number(self.ratio, "SlimFitConfig.ratio", low=0.0, high=1.0, high_open=True)
        check_int(self.interval, "SlimFitConfig.interval", low=1)
        check_int(self.warmup, "SlimFitConfig.warmup", low=0)


def _scheduled(model: nn.Module, names: list[str], cfg: SlimFitConfig) -> list[str]:
    """The trainable linears SlimFit schedules: ``cfg.targets`` globs, or every one inside a block (the host
    adapter names the blocks), minus ``cfg.skip``."""
    what = "trainable linear layers"
    if cfg.targets is not None:
        return select_names(names, cfg.targets, cfg.skip, what=what)
    prefixes = tuple(f"{block}." for block, _ in adapter_for(model).blocks(model))
    inside = {n for n in names if n.startswith(prefixes)}
    if not inside:
        sample = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise ConfigError(f"no {what} inside the model's blocks to schedule; {what} are named like: {sample}")
    return [n for n in select_names(names, None, cfg.skip, what=what) if n in inside]


class SlimFitFreezer:
    """Call :meth:`step` after every optimizer step (``fit``'s progress callback does)."""

    def __init__(self, model: nn.Module, cfg: SlimFitConfig) -> None:
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.weight.requires_grad]
        if not names:
            raise ConfigError("SlimFit found no trainable nn.Linear layers to schedule")
        self.names = _scheduled(model, names, cfg)
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
