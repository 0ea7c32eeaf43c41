"""Model merging for ViTs: soups, task arithmetic, TIES, DARE, OPCM, FW-Merging, RegMean, PLeaS.

```python
import vitkit
merged = vitkit.merge([sd_a, sd_b, "c.safetensors"], vitkit.TIESConfig(density=0.2), base=sd_0)
merger = vitkit.merging.OPCMMerger(sd_0)          # continual: one model at a time, constant memory
for ckpt in checkpoints:
    merger.add(ckpt)
```
The CLI is ``vitkit merge merge.yaml -o out/`` (see :mod:`vitkit.merging.yaml_config`).

One file per method (its config, its registered function, the paper and equation it implements):
:mod:`.average`, :mod:`.greedy_soup`, :mod:`.task_arithmetic`, :mod:`.ties`, :mod:`.dare`, :mod:`.opcm`,
:mod:`.fw_merging`, :mod:`.regmean`, :mod:`.pleas`; the engine they run through is :mod:`.core`.
"""

from ..registry import get_merge_method, list_merge_methods, register_merge
from .average import AverageConfig
from .core import merge
from .dare import DAREConfig
from .fw_merging import FWMergingConfig
from .greedy_soup import GreedySoupConfig
from .opcm import OPCMConfig, OPCMMerger
from .pleas import PLeaSConfig
from .regmean import RegMeanConfig
from .step import MergeStepConfig
from .task_arithmetic import TaskArithmeticConfig
from .ties import TIESConfig

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
