"""TinyViT-style teacher logit cache (Wu et al., ECCV 2022, §3.1): top-k probabilities on disk.

Per epoch one ``epoch_<e>.safetensors`` holds ``values`` (float16 ``[N, k]``) and ``indices`` (int16 ``[N, k]``)
in the order the trainer visits samples, plus a JSON header with the augmentation seed. TinyViT stores one
seed per sample and re-runs the augmentation from it; vitkit's augmentation is one seeded stream per epoch
(``seed·1000 + epoch``), so we store that stream seed and the batch size — deliberately coarser, same effect:
the student pass regenerates the identical augmented images without running the teacher.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError, ConfigError

_log = logging.getLogger(__name__)


def fingerprint(model: nn.Module) -> str:
    """Short hash of a model's weights (so a cache of another teacher is never reused)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().flatten()[:64].numpy().tobytes())
        h.update(str(tuple(v.shape)).encode())
    return h.hexdigest()[:16]


class LogitCache:
    """Top-k teacher probabilities per epoch; ``lookup(epoch, start, n)`` → dense ``[n, C]`` targets."""

    def __init__(self, directory: str | Path, *, k: int, temperature: float, num_classes: int) -> None:
        if num_classes > 32767:
            raise ConfigError("the logit cache stores class indices as int16: at most 32767 classes")
        self.directory, self.k, self.temperature, self.num_classes = Path(directory), k, temperature, num_classes
        self._epochs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _paths(self, epoch: int) -> tuple[Path, Path]:
        return self.directory / f"epoch_{epoch}.safetensors", self.directory / f"epoch_{epoch}.json"

    def build(self, teacher: nn.Module, batches, epoch: int, header: dict) -> bool:
        """Run the teacher over ``batches`` once and store top-k; returns False if a matching cache exists."""
        from safetensors.torch import save

        from .._io import atomic_write_bytes, atomic_write_text

        tensors, meta = self._paths(epoch)
        want = dict(header, k=self.k, temperature=self.temperature, epoch=epoch)
        if tensors.is_file() and meta.is_file():
            try:
                if json.loads(meta.read_text()) == want:
                    return False
            except json.JSONDecodeError:
                pass
        vals, idx = [], []
        teacher.eval()
        with torch.inference_mode():
            for x, _ in batches:
                p = F.softmax(teacher(x).float() / self.temperature, dim=-1)  # [B, C]
                v, i = p.topk(min(self.k, p.shape[-1]), dim=-1)
                vals.append(v.half())
                idx.append(i.to(torch.int16))
        atomic_write_bytes(tensors, save({"values": torch.cat(vals), "indices": torch.cat(idx)}))
        atomic_write_text(meta, json.dumps(want, sort_keys=True))
        return True

    def lookup(self, epoch: int, start: int, n: int) -> torch.Tensor:
        from .losses import dense_from_topk

        if epoch not in self._epochs:
            from ..models.load import read_state_dict

            path = self._paths(epoch)[0]
            if not path.is_file():
                raise CheckpointError(f"logit cache {path} is missing: rebuild it (delete {self.directory})")
            t = read_state_dict(path)
            self._epochs = {epoch: (t["values"], t["indices"])}  # keep one epoch in memory
        values, indices = self._epochs[epoch]
        if start + n > values.shape[0]:
            raise CheckpointError(f"logit cache epoch {epoch} has {values.shape[0]} rows, asked for {start + n}")
        return dense_from_topk(values[start : start + n], indices[start : start + n], self.num_classes)
