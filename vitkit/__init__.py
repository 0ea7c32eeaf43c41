"""vitkit: make Vision Transformers faster, smaller and combinable.

```python
import vitkit
model = vitkit.load("deit_small_patch16_224")
report = vitkit.apply_(model, [vitkit.ToMeConfig(r=13)])
result = vitkit.benchmark(model, data=vitkit.data.load_dataset("mnist5k", model=model), baseline=original)
```
"""

__version__ = "0.1.0"

from . import data  # noqa: E402
from .api import apply_  # noqa: E402
from .artifact import load_artifact, save_artifact  # noqa: E402
from .bench import BenchResult, benchmark  # noqa: E402
from .configs import TransformConfig, resolve_schedule, select_names  # noqa: E402
from .errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    DataError,
    NumericsError,
    OrderError,
    UnsupportedModelError,
    VitkitError,
)
from .models import load  # noqa: E402
from .registry import get_transform, list_transforms, register_transform  # noqa: E402
from .report import Report  # noqa: E402

__all__ = [
    "PruneConfig",
    "DistillConfig",
    "AverageConfig",
    "DAREConfig",
    "FWMergingConfig",
    "GreedySoupConfig",
    "OPCMConfig",
    "PLeaSConfig",
    "RegMeanConfig",
    "TaskArithmeticConfig",
    "TIESConfig",
    "merge",
    "BenchResult",
    "EViTConfig",
    "HiPruneConfig",
    "PiToMeConfig",
    "ToMeConfig",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "NumericsError",
    "OrderError",
    "MixedPrecisionConfig",
    "PTQConfig",
    "Report",
    "TransformConfig",
    "UnsupportedModelError",
    "VitkitError",
    "apply_",
    "benchmark",
    "data",
    "get_transform",
    "list_transforms",
    "load",
    "load_artifact",
    "register_transform",
    "resolve_schedule",
    "save_artifact",
    "select_names",
]
from .tokens import EViTConfig, HiPruneConfig, PiToMeConfig, ToMeConfig  # noqa: E402

from .merging import AverageConfig, DAREConfig, FWMergingConfig, GreedySoupConfig, OPCMConfig, PLeaSConfig, RegMeanConfig, TaskArithmeticConfig, TIESConfig, merge  # noqa: E402, E501  # isort: skip
from .quant import MixedPrecisionConfig, PTQConfig  # noqa: E402

from .prune import PruneConfig; from .distill import DistillConfig  # noqa: E402, E702  # isort: skip
