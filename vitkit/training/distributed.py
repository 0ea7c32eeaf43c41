"""torchrun / DistributedDataParallel helpers for the trainer (gloo on CPU, nccl on GPU).

Each rank takes an equal contiguous slice of every *global* batch and weights its mean loss by its share, so
the averaged DDP gradient equals the single-process gradient of the same global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist
import torch.nn as nn

from ..errors import ConfigError


def init_from_env() -> bool:
    """Initialise the process group from torchrun's environment (``WORLD_SIZE`` > 1); True if distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls, batch_size: int) -> DistContext:
        if not (tdist.is_available() and tdist.is_initialized()):
            return cls()
        ctx = cls(tdist.get_rank(), tdist.get_world_size())
        if batch_size % ctx.world:
            raise ConfigError(
                f"batch_size {batch_size} is not divisible by the world size {ctx.world}: use a multiple of {ctx.world}"
            )
        return ctx

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.world == 1:
            return model
        return nn.parallel.DistributedDataParallel(model)

    def _bounds(self, n: int) -> tuple[int, int]:
        per = -(-n // self.world)  # ceil: the last rank may get fewer samples of a partial batch
        return min(n, self.rank * per), min(n, (self.rank + 1) * per)

    def offset(self, n: int) -> int:
        return self._bounds(n)[0]

    def shard(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """This rank's slice of a global batch and the loss weight ``world · n_rank / n_global``."""
        if self.world == 1:
            return x, y, 1.0
        a, b = self._bounds(x.shape[0])
        return x[a:b], y[a:b], self.world * (b - a) / x.shape[0]

    def evaluate(self, model: nn.Module, dataset, batch_size: int = 256) -> float:
        """Sharded top-1: each rank scores every world-th batch, counts are summed with all_reduce."""
        from ..data import iterate_batches

        was = model.training
        model.eval()
        counts = torch.zeros(2, dtype=torch.float64)
        with torch.inference_mode():
            for i, (x, y) in enumerate(iterate_batches(dataset, batch_size)):
                if i % self.world == self.rank:
                    counts[0] += float((model(x).argmax(-1) == y).sum())
                    counts[1] += y.numel()
        tdist.all_reduce(counts)
        model.train(was)
        return float(counts[0] / counts[1].clamp_min(1))
