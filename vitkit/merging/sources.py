"""Merge inputs read one tensor at a time: in-memory state dicts, ``.safetensors`` files (``safe_open``, lazy)
and artifact directories (their ``model.safetensors``). ``.pth``/``.pt`` files are read whole (pickle has no
per-tensor access) with ``weights_only=True``.

Peak memory of a streaming merge is the output plus the N tensors of *one* name, not N models.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import CheckpointError, ConfigError

_log = logging.getLogger(__name__)

_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class TensorSource:
    """A read-only checkpoint: ``keys()``, ``shape(k)``, ``dtype(k)``, ``get(k)`` (a fresh tensor each call)."""

    label: str

    def keys(self) -> list[str]:
        raise NotImplementedError

    def shape(self, key: str) -> tuple[int, ...]:
        raise NotImplementedError

    def dtype(self, key: str) -> torch.dtype:
        raise NotImplementedError

    def get(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def close(self) -> None:
        pass


class StateDictSource(TensorSource):
    """An in-memory state dict (never modified: ``get`` returns the stored tensor, callers must not write it)."""

    def __init__(self, state: dict[str, torch.Tensor], label: str) -> None:
        self.state, self.label = state, label

    def keys(self) -> list[str]:
        return list(self.state)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.state[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self.state[key].dtype

    def get(self, key: str) -> torch.Tensor:
        return self.state[key].detach()


class SafetensorsSource(TensorSource):
    """A ``.safetensors`` file opened with ``safe_open``: only the tensor asked for is read."""

    def __init__(self, path: Path) -> None:
        from safetensors import SafetensorError, safe_open

        self.label = str(path)
        if not path.is_file():
            raise CheckpointError(
                f"checkpoint file not found: {path}: check the path (relative paths start at the current directory)"
            )
        try:
            self._fh = safe_open(str(path), framework="pt", device="cpu")
            self._keys = list(self._fh.keys())
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"corrupt or truncated safetensors file {path} ({exc}): re-download it or re-save the weights"
            ) from None
        self._meta: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}

    def _info(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        if key not in self._meta:
            sl = self._fh.get_slice(key)
            self._meta[key] = (tuple(sl.get_shape()), _ST_DTYPES.get(sl.get_dtype(), torch.float32))
        return self._meta[key]

    def keys(self) -> list[str]:
        return list(self._keys)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._info(key)[0]

    def dtype(self, key: str) -> torch.dtype:
        return self._info(key)[1]

    def get(self, key: str) -> torch.Tensor:
        return self._fh.get_tensor(key)

    def close(self) -> None:
        self._fh = None


def open_source(obj: Any, label: str | None = None) -> TensorSource:
    """Wrap a state dict, ``nn.Module``, ``.safetensors``/``.pth`` path or artifact dir as a :class:`TensorSource`."""
    if isinstance(obj, TensorSource):
        return obj
    if isinstance(obj, nn.Module):
        return StateDictSource(obj.state_dict(), label or type(obj).__name__)
    if isinstance(obj, dict):
        bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(f"{label or 'state dict'} holds a non-tensor value at {bad[0]!r}: pass tensors only")
        return StateDictSource(obj, label or "state dict")
    if isinstance(obj, str | Path):
        path = Path(obj).expanduser()
        if path.is_dir():
            weights = path / "model.safetensors"
            if not weights.is_file():
                raise CheckpointError(f"{path} is a directory without model.safetensors: pass an artifact dir or file")
            return SafetensorsSource(weights)
        if path.suffix == ".safetensors":
            return SafetensorsSource(path)
        from ..models.load import read_state_dict

        _log.info("%s is not safetensors: reading it whole (no per-tensor streaming)", path)
        return StateDictSource(read_state_dict(path), str(path))
    raise ConfigError(
        f"cannot merge a {type(obj).__name__}: pass state dicts, nn.Modules, .safetensors/.pth paths or artifact dirs"
    )


def open_sources(models: Iterable[Any]) -> list[TensorSource]:
    items = list(models) if not isinstance(models, dict | str | Path) else None
    if items is None:
        raise ConfigError("models must be a list (of state dicts, paths or artifact dirs), not a single model")
    if not items:
        raise ConfigError("no models to merge: pass at least one state dict, path or artifact dir")
    return [open_source(m, label=f"model {i}") for i, m in enumerate(items)]


def check_compatible(
    sources: Sequence[TensorSource], base: TensorSource | None, *, allow_shapes: bool = False
) -> list[str]:
    """Same keys and shapes everywhere; returns the key order of the reference (base, else model 0).

    Raises :class:`CheckpointError` naming the first missing key or mismatching tensor.
    """
    ref = base if base is not None else sources[0]
    keys = ref.keys()
    ref_set = set(keys)
    for src in sources if base is not None else sources[1:]:
        own = set(src.keys())
        missing = [k for k in keys if k not in own]
        if missing:
            raise CheckpointError(
                f"{src.label} lacks tensor {missing[0]!r} that {ref.label} has ({len(missing)} missing): "
                "all models must share one architecture (or use targets=/skip= to merge a subset and copy the rest)"
            )
        extra = [k for k in src.keys() if k not in ref_set]
        if extra:
            raise CheckpointError(
                f"{src.label} has tensor {extra[0]!r} that {ref.label} lacks ({len(extra)} extra): "
                "all models must share one architecture"
            )
        if allow_shapes:
            continue
        for k in keys:
            if src.shape(k) != ref.shape(k):
                raise CheckpointError(
                    f"tensor {k!r} has shape {list(src.shape(k))} in {src.label} but {list(ref.shape(k))} in "
                    f"{ref.label}: models of different architectures cannot be merged tensor by tensor"
                )
    return keys


def compute_dtype(dtypes: Iterable[torch.dtype]) -> tuple[torch.dtype, torch.dtype]:
    """(compute dtype, output dtype) for one tensor across models.

    Mixed floating dtypes are *upcast*: the output takes the widest input dtype (bf16 + fp32 → fp32); the
    arithmetic runs in float32, or float64 when an input is float64.
    """
    dts = list(dtypes)
    out = dts[0]
    for d in dts[1:]:
        out = torch.promote_types(out, d)
    comp = torch.float64 if out == torch.float64 else torch.float32
    return comp, out
