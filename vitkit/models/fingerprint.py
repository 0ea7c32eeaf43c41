"""A model's identity as a short hash: what search logs and the ``runtime: auto`` cache are keyed by."""

from __future__ import annotations

import hashlib
import json

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..history import step_history
from .load import arch_record


def model_fingerprint(model: nn.Module) -> str:
    """sha256 (16 hex) of the architecture record, the step history (names and configs: a ToMe r changes the model
    without changing a tensor) and every tensor of the state dict, whatever its dtype."""
    h = hashlib.sha256()
    try:
        h.update(json.dumps(arch_record(model), sort_keys=True, default=str).encode())
    except ConfigError:
        h.update(type(model).__name__.encode())
    steps = [(s.name, getattr(s, "config", None)) for s in step_history(model)]
    h.update(json.dumps(steps, sort_keys=True, default=str).encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # bf16 included
    return h.hexdigest()[:16]
