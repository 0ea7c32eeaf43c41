"""Training-free token reduction for ViTs: ToMe, EViT, PiToMe, HiPrune (+ a random-drop control), through the
host adapter.

```python
import vitkit
vitkit.apply_(model, vitkit.ToMeConfig(r=13))   # patched in place; weights untouched
vitkit.tokens.remove(model)                     # original classes back
```
All methods share one patch (:mod:`vitkit.tokens.patch`): a reducer between each block's attention and
MLP, fused SDPA kept, prefix tokens protected, bit-exact at zero strength.
"""

from .evit import EViTConfig
from .hiprune import HiPruneConfig
from .patch import remove
from .pitome import PiToMeConfig
from .random_drop import RandomDropConfig
from .tome import ToMeConfig

__all__ = ["EViTConfig", "HiPruneConfig", "PiToMeConfig", "RandomDropConfig", "ToMeConfig", "remove"]
