"""OPCM — continual merging by orthogonal projection and adaptive scaling (Tang et al., arXiv 2501.09522).

```python
merger = OPCMMerger(base_sd, OPCMConfig(alpha=0.5))
for path in checkpoints:          # one at a time: memory = base + merged + one incoming tensor
    merger.add(path)
merged = merger.state_dict()
```
Algorithm (paper §3, Eqs. 6–9; reference code fusion_bench/method/opcm/opcm.py), for t ≥ 2:

* ν = mean_t ‖θ_t − θ0‖ (whole-model norm over the merged tensors);
* per 2-D weight: τ'_t = projection of τ_t orthogonal to the dominant singular subspace of the merged update
  D = M − θ0 (:func:`vitkit.ops.merging.opcm_project`, reduced SVD — exact); other tensors τ'_t = τ_t;
* N = λ_{t−1} D + τ'_t;  λ_t = ‖N‖ / ν;  M = θ0 + N / λ_t  (so ‖M − θ0‖ = ν).

Deliberate differences from the reference port: it iterates over *tensor names* (so root-level parameters
such as the position embedding and class token are merged — FusionBench's leaf-module loop skips them), and the
"2-D weights" are every 2-D ``*.weight`` tensor (in a plain ViT exactly the ``nn.Linear`` weights; the patch
embedding is a 4-D conv).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from ..configs import TransformConfig
from ..errors import ConfigError
from ..ops import merging as ops
from ..registry import register_merge
from ..validate import check_number
from .core import MergeContext, selected_keys
from .sources import TensorSource, check_compatible, compute_dtype, open_source

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OPCMConfig(TransformConfig):
    """OPCM (Tang et al. 2025): continual merging by orthogonal projection + adaptive scaling; ``alpha`` is the
    fraction of the merged update's singular-value mass whose subspace is protected (paper default 0.5)."""

    alpha: float = 0.5

    def validate(self) -> None:
        check_number(self.alpha, "OPCMConfig.alpha", low=0, high=1)


def is_projected(name: str, shape: tuple[int, ...]) -> bool:
    """OPCM projects the 2-D weights of linear layers; biases, norms, embeddings, tokens are merged unprojected."""
    return len(shape) == 2 and name.endswith("weight")


class OPCMMerger:
    """Sequential OPCM: :meth:`add` one model at a time; :meth:`state_dict` is the current merge.

    Holds θ0 (lazily, if given as a ``.safetensors`` path), the merged weights, λ_{t−1} and the task-vector
    norms: memory does not grow with the number of models.
    """

    def __init__(self, base: Any, cfg: OPCMConfig | None = None) -> None:
        cfg = cfg if cfg is not None else OPCMConfig()
        if not isinstance(cfg, OPCMConfig):
            raise ConfigError(f"OPCMMerger takes an OPCMConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.base: TensorSource = open_source(base, label="base")
        self.keys = self.base.keys()
        self.chosen = {k for k in selected_keys(self.keys, cfg) if self.base.dtype(k).is_floating_point}
        self.merged: dict[str, torch.Tensor] | None = None
        self.lambda_prev = 1.0
        self.norms: list[float] = []
        self.lambdas: list[float] = []

    @property
    def count(self) -> int:
        return len(self.norms)

    def add(self, model: Any) -> OPCMMerger:
        src = open_source(model, label=f"model {self.count}")
        check_compatible([src], self.base)
        if self.merged is None:
            self._first(src)
        else:
            self._step(src)
        src.close()
        return self

    def _pair(self, src: TensorSource, k: str) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
        comp, out = compute_dtype([src.dtype(k), self.base.dtype(k)])
        return src.get(k).to(comp), self.base.get(k).to(comp), out

    def _first(self, src: TensorSource) -> None:
        merged, sq = {}, 0.0
        for k in self.keys:
            if k in self.chosen:
                t, b, out_dt = self._pair(src, k)
                sq += float((t - b).double().square().sum())
                merged[k] = t.clone()
            else:
                merged[k] = self.base.get(k).clone()
        self.merged = merged
        self.norms.append(math.sqrt(sq))
        self.lambdas.append(1.0)

    def _step(self, src: TensorSource) -> None:
        assert self.merged is not None
        sq_tau = sq_n = 0.0
        for k in self.keys:  # pass 1: N = λ_{t-1} D + τ' (stored in place of M)
            if k not in self.chosen:
                continue
            t, b, _ = self._pair(src, k)
            tau = t - b
            sq_tau += float(tau.double().square().sum())
            d = self.merged[k].to(tau.dtype) - b
            if is_projected(k, tuple(tau.shape)):
                tau = ops.opcm_project(d, tau, self.cfg.alpha)
            n = self.lambda_prev * d + tau
            sq_n += float(n.double().square().sum())
            self.merged[k] = n
        self.norms.append(math.sqrt(sq_tau))
        nu = sum(self.norms) / len(self.norms)
        norm_n = math.sqrt(sq_n)
        lam = norm_n / nu if nu > 0 else 1.0
        scale = nu / norm_n if norm_n > 0 else 0.0
        for k in self.chosen:  # pass 2: M = θ0 + N ν/‖N‖
            _, b, out_dt = self._pair(src, k)
            self.merged[k] = (b + self.merged[k] * scale).to(out_dt)
        self.lambda_prev = lam
        self.lambdas.append(lam)
        _log.info("OPCM step %d: ν=%.4g ‖N‖=%.4g λ=%.4g", self.count, nu, norm_n, lam)

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.merged is None:
            raise ConfigError("OPCMMerger has no models yet: call add(model) first")
        return {k: v.clone() for k, v in self.merged.items()}


@register_merge("opcm", OPCMConfig, paper="Merging Models on the Fly Without Retraining (OPCM)", needs_base=True)
def merge_opcm(sources, base, cfg: OPCMConfig, ctx: MergeContext):
    """OPCM over ``models`` in the given order (the order matters, a little: see the order-robustness figure)."""
    check_compatible(sources, base)
    merger = OPCMMerger(base, cfg)
    for i, s in enumerate(sources):
        merger.add(s)
        if ctx.progress:
            ctx.progress(i + 1, len(sources), s.label)
    ctx.info["lambdas"] = list(merger.lambdas)
    return merger.merged or {}
