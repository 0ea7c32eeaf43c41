"""Early exit for ViTs (LGViT): exit heads after intermediate blocks, per-sample exiting in a batch.

```python
import vitkit
from vitkit.early_exit import EarlyExitConfig, calibrate, exit_histogram
vitkit.apply_(model, EarlyExitConfig(exits=[2, 3, 4], head="linear", train=dict(epochs=3)))  # heads trained by KD
calibrate(model, val_set, max_drop=1.0)     # one threshold: most exits within a 1-point top-1 drop
calibrate(model, val_set, 1.0, per_exit=True, cost="latency")  # or: τ per exit, minimising measured latency
logits = model(x)                           # eval: each sample leaves at its first confident exit
exit_histogram(model)                       # {block name: n, ..., "final": n}
```
"""

from .config import EarlyExitConfig
from .runtime import exit_histogram, last_exits, remove, reset_histogram, set_enabled, set_threshold
from .train import calibrate, evaluate_exits, train_exit_heads
from .transform import apply_early_exit

__all__ = [
    "EarlyExitConfig",
    "apply_early_exit",
    "calibrate",
    "evaluate_exits",
    "exit_histogram",
    "last_exits",
    "remove",
    "reset_histogram",
    "set_enabled",
    "set_threshold",
    "train_exit_heads",
]
