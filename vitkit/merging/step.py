"""The ``merge`` recipe step (kind "weights"): merge listed checkpoints into the model being transformed, in place.

```yaml
steps:
  - merge: {method: task_arithmetic, models: [self, ft_a.safetensors, ft_b/], base: base.safetensors,
            params: {scaling: 0.3}}
```
``models`` are ``.safetensors``/``.pth`` files or artifact dirs; ``self`` is the model's current weights. ``params``
are the chosen method's config keys (see ``vitkit.merging.list_merge_methods()``). Data-based methods (RegMean,
PLeaS) get the recipe's calibration images; greedy soup and FW-Merging (which need an evaluation callback or a
loss) are not available as a step. A dry run checks the method and its parameters without reading the models.
The merged weights must fit the model (PLeaS with ``mlp_width`` changes shapes and is refused here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from ..configs import TransformConfig
from ..errors import ConfigError
from ..registry import get_merge_method, register_transform
from .core import merge

_NOT_AS_STEP = ("greedy_soup", "fw_merging")


@dataclass(frozen=True)
class MergeStepConfig(TransformConfig):
    """Merge ``models`` (paths, artifact dirs or ``self``) with ``method`` and ``params``; ``base`` for task vectors."""

    method: str = "task_arithmetic"
    models: tuple[str, ...] = ()
    base: str | None = None
    params: dict[str, Any] | None = None

    def __hash__(self) -> int:
        return hash((self.method, tuple(self.models), self.base, repr(sorted((self.params or {}).items()))))

    def method_config(self) -> TransformConfig:
        m = get_merge_method(self.method)
        return m.config_cls.from_dict(dict(self.params or {}))

    def validate(self) -> None:
        if self.method in _NOT_AS_STEP:
            raise ConfigError(
                f"merge step: method {self.method!r} needs an evaluation callback or a loss; "
                "use vitkit.merge() in Python"
            )
        m = get_merge_method(self.method)
        if isinstance(self.models, str) or len(self.models) < 1:
            raise ConfigError("merge step needs models: a list of checkpoint paths / artifact dirs (or 'self')")
        if m.needs_base and not self.base:
            raise ConfigError(f"merge step: {self.method} takes task vectors against a base: add base: <path>")
        if self.params is not None and not isinstance(self.params, dict):
            raise ConfigError(f"merge step: params must be a mapping of {m.config_cls.__name__} keys")
        self.method_config()  # unknown / invalid keys fail here


@register_transform(
    MergeStepConfig,
    name="merge",
    kind="weights",
    paper="model merging (see vitkit.merging.list_merge_methods())",
    example=lambda workdir: {"method": "ties", "models": [str(workdir / "model")] * 2, "base": str(workdir / "model")},
    zero=lambda workdir: {"method": "average", "models": [str(workdir / "model")] * 2},  # identical models
)
def apply_merge(model: nn.Module, cfg: MergeStepConfig, *, calib=None, dry_run: bool = False) -> dict:
    method = get_merge_method(cfg.method)
    mcfg = cfg.method_config()
    decisions = {"method": cfg.method, "models": list(cfg.models), "base": cfg.base, "params": dict(cfg.params or {})}
    if dry_run:
        return decisions
    own = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sources = [own if str(m) == "self" else m for m in cfg.models]
    base = own if cfg.base == "self" else cfg.base
    if "calib" in method.needs and calib is None:
        raise ConfigError(f"merge step: {cfg.method} needs calibration images (the recipe's calib section)")
    info: dict = {}
    merged = merge(sources, mcfg, base=base, model=model, calib=calib, info=info)
    bad = [k for k, v in merged.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if bad or set(merged) != set(own):
        raise ConfigError(f"merge step: merged weights do not fit the model (first mismatch {(bad or ['keys'])[0]!r})")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in merged.items()})
    decisions["info"] = {k: v for k, v in info.items() if isinstance(v, int | float | str | bool | list)}
    return decisions
