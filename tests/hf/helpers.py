"""What the transformers / open_clip tests share: weights pushed off their init, a saved folder read back."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file


def perturb_(params, keep: Callable[[str, torch.Tensor], bool] = lambda name, p: True, scale: float = 0.1) -> None:
    """Add ``scale``·N(0, 1) noise to every ``(name, parameter)`` that ``keep`` accepts: unit-init norms and zero
    biases would hide mapping mistakes (the global RNG: seed it first)."""
    with torch.no_grad():
        for name, p in params:
            if keep(name, p):
                p.add_(scale * torch.randn_like(p))


def save_and_read(model, path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``save_pretrained`` then read the folder back as the converters see it: ``(config, state dict)``."""
    model.save_pretrained(path)
    return json.loads((path / "config.json").read_text()), load_file(str(path / "model.safetensors"))
