"""Post-training quantization of ViTs (RepQ-ViT, PTQ4ViT-style, min-max, percentile).

```python
import vitkit
vitkit.apply_(model, vitkit.PTQConfig(w_bits=8, a_bits=8, method="repq"), calib=images)  # fake-quant, in place
logits = vitkit.quant.to_integer(model)(images)  # integer-only inference (I-ViT ops)
vitkit.save_artifact(model, recipe, report, "out/")  # ptq artifacts store packed int8/int4 weights
```
Quantizer math lives in :mod:`vitkit.ops.quant`; quantizers in :mod:`vitkit.quant.quantizer`, quantized layers in
:mod:`vitkit.quant.modules`, one file per PTQ method in :mod:`vitkit.quant.calibrators`. Int8 deployment
(``deploy_int8``, ``export_qdq``, ``OrtModule``, ...) lives in :mod:`vitkit.deploy`.
"""

from .integer import IntegerViT, to_integer
from .mixed import MixedPrecisionConfig
from .modules import quantized_size_bytes, quantizers, set_quant_enabled
from .precision import PrecisionConfig
from .ptq import PTQConfig, apply_ptq

__all__ = [
    "IntegerViT",
    "MixedPrecisionConfig",
    "PTQConfig",
    "PrecisionConfig",
    "apply_ptq",
    "quantized_size_bytes",
    "quantizers",
    "set_quant_enabled",
    "to_integer",
]
