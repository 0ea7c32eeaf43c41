"""Training checkpoints without pickle: ``state.safetensors`` (model, optimizer tensors, RNG) + ``state.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import CheckpointError

TENSORS = "state.safetensors"
META = "state.json"


def save_training_state(
    directory: str | Path, model: nn.Module, opt: torch.optim.Optimizer, pos: dict[str, Any]
) -> None:
    """Write model + optimizer + RNG + loop position atomically (tensors first, then the JSON that names them)."""
    from safetensors.torch import save

    from .._io import atomic_write_bytes, atomic_write_text, state_dict_for_saving

    directory = Path(directory)
    tensors = {f"model/{k}": v for k, v in state_dict_for_saving(model).items()}
    osd = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in osd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt/{idx}/{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    tensors["rng/torch"] = torch.get_rng_state()
    meta = dict(pos, param_groups=osd["param_groups"], opt_scalars=scalars, format=1)
    atomic_write_bytes(directory / TENSORS, save(tensors))
    atomic_write_text(directory / META, json.dumps(meta, default=float) + "\n")


def load_training_state(directory: str | Path | None, model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Load what :func:`save_training_state` wrote into ``model``/``opt``; return the loop position."""
    from ..models.load import load_state_dict_strict, read_state_dict

    if directory is None:
        raise CheckpointError("resume needs a checkpoint directory: pass checkpoint_dir / --checkpoint-dir")
    directory = Path(directory)
    if not (directory / META).is_file() or not (directory / TENSORS).is_file():
        raise CheckpointError(f"no training checkpoint in {directory} (expected {TENSORS} + {META}); drop --resume")
    try:
        meta = json.loads((directory / META).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"corrupt checkpoint {directory / META}: {exc}") from None
    tensors = read_state_dict(directory / TENSORS)  # names the file if truncated/corrupt
    model_sd = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    load_state_dict_strict(model, model_sd, source=str(directory / TENSORS))
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("opt/"):
            _, idx, name = k.split("/", 2)
            state.setdefault(int(idx), {})[name] = v
    for idx, extra in (meta.get("opt_scalars") or {}).items():
        state.setdefault(int(idx), {}).update(extra)
    try:
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {directory} does not match this optimizer/model: {exc}") from None
    torch.set_rng_state(tensors["rng/torch"])
    return meta
