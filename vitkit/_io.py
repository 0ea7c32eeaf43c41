"""Atomic file writes and save-ready state dicts: the bottom of the stack, imported by anyone who writes files."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn as nn


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same directory and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def swap_in_dir(stage: str | Path, directory: str | Path) -> Path:
    """Put the fully written directory ``stage`` at ``directory`` (same parent): a rename, the old one (if any)
    moved aside first and removed after, so a reader sees the old or the new directory, never half of one."""
    stage, directory = Path(stage), Path(directory)
    if directory.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
        old.rmdir()
        os.replace(directory, old)
        os.replace(stage, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(stage, directory)
    return directory


def state_dict_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, with tensors that share storage cloned (safetensors refuses aliasing)."""
    out, seen = {}, set()
    for k, v in model.state_dict().items():
        t = v.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[k] = t
    return out
