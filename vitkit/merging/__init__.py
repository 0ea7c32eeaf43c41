"""Model merging for timm ViTs: soups, task arithmetic, TIES, DARE, OPCM, FW-Merging, RegMean, PLeaS.

```python
import vitkit
merged = vitkit.merge([sd_a, sd_b, "c.safetensors"], vitkit.TIESConfig(density=0.2), base=sd_0)
merger = vitkit.merging.OPCMMerger(sd_0)          # continual: one model at a time, constant memory
for ckpt in checkpoints:
    merger.add(ckpt)
```
The CLI is ``vitkit merge merge.yaml -o out/`` (see :mod:`vitkit.merging.yaml_config`).
"""

from ..registry import get_merge_method, list_merge_methods, register_merge
from . import data_methods, opcm, step  # noqa: F401  (register their methods and the recipe step)
from .configs import (
    AverageConfig,
    DAREConfig,
    FWMergingConfig,
    GreedySoupConfig,
    OPCMConfig,
    PLeaSConfig,
    RegMeanConfig,
    TaskArithmeticConfig,
    TIESConfig,
)
from .core import merge
from .opcm import OPCMMerger
from .step import MergeStepConfig

try:  # PLeaS needs scipy
    from . import pleas  # noqa: F401
except ModuleNotFoundError as exc:  # pragma: no cover
    if exc.name not in ("vitkit.merging.pleas", "scipy"):
        raise

__all__ = [
    "AverageConfig",
    "DAREConfig",
    "FWMergingConfig",
    "GreedySoupConfig",
    "MergeStepConfig",
    "OPCMConfig",
    "OPCMMerger",
    "PLeaSConfig",
    "RegMeanConfig",
    "TIESConfig",
    "TaskArithmeticConfig",
    "get_merge_method",
    "list_merge_methods",
    "merge",
    "register_merge",
]
