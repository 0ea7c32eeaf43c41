"""vitkit: make Vision Transformers faster, smaller and combinable.

```python
import vitkit
model = vitkit.load("deit_small_patch16_224")
report = vitkit.apply_(model, [vitkit.ToMeConfig(r=13)])
result = vitkit.benchmark(model, data=vitkit.data.load_dataset("mnist5k", model=model), baseline=original)
```
"""

# ruff: noqa: E402
from . import data, interop  # noqa: F401  (interop: loading a transformers export re-applies its runtime steps)
from ._version import __version__
from .adapt import AdapterConfig, FineTuneConfig, LoRAConfig, LoRAMergeConfig, PromptConfig, SlimFitConfig
from .api import apply_, merge_back
from .artifact import load_artifact, save_artifact
from .bench import BenchResult, benchmark
from .configs import TransformConfig, resolve_schedule, select_names
from .distill import DistillConfig
from .early_exit import EarlyExitConfig
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    NumericsError,
    OrderError,
    UnsupportedModelError,
    VitkitError,
)
from .merging import (
    AverageConfig,
    DAREConfig,
    FWMergingConfig,
    GreedySoupConfig,
    MergeStepConfig,
    OPCMConfig,
    PLeaSConfig,
    RegMeanConfig,
    TaskArithmeticConfig,
    TIESConfig,
    merge,
)
from .models import load
from .prune import PruneConfig
from .quant import MixedPrecisionConfig, PrecisionConfig, PTQConfig
from .registry import get_transform, list_transforms, register_transform
from .report import Report
from .tokens import EViTConfig, HiPruneConfig, PiToMeConfig, ToMeConfig

__all__ = [
    "__version__",
    "AdapterConfig",
    "FineTuneConfig",
    "LoRAConfig",
    "LoRAMergeConfig",
    "PromptConfig",
    "SlimFitConfig",
    "AverageConfig",
    "BenchResult",
    "CheckpointError",
    "ConfigError",
    "DAREConfig",
    "DataError",
    "DistillConfig",
    "EarlyExitConfig",
    "EViTConfig",
    "FWMergingConfig",
    "GreedySoupConfig",
    "HiPruneConfig",
    "MergeStepConfig",
    "MixedPrecisionConfig",
    "NumericsError",
    "OPCMConfig",
    "OrderError",
    "PLeaSConfig",
    "PTQConfig",
    "PrecisionConfig",
    "PiToMeConfig",
    "PruneConfig",
    "RegMeanConfig",
    "Report",
    "TIESConfig",
    "TaskArithmeticConfig",
    "ToMeConfig",
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
    "merge",
    "merge_back",
    "register_transform",
    "resolve_schedule",
    "save_artifact",
    "select_names",
]
