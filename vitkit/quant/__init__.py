"""Post-training quantization of ViTs (RepQ-ViT, PTQ4ViT-style, min-max, percentile) and int8 deployment.

```python
import vitkit
vitkit.apply_(model, vitkit.PTQConfig(w_bits=8, a_bits=8, method="repq"), calib=images)  # fake-quant, in place
vitkit.quant.deploy_int8(model, "out/", calib=images)  # RepQ reparam, outlier channels float, ORT dynamic int8
vitkit.quant.export_qdq(model, "model.qdq.onnx")  # ONNX QDQ with vitkit's scales (W8A8), int8 weights
logits = vitkit.quant.to_integer(model)(images)  # integer-only inference (I-ViT ops)
vitkit.save_artifact(model, recipe, report, "out/")  # ptq artifacts store packed int8/int4 weights
```
Quantizer math lives in :mod:`vitkit.ops.quant`; modules in :mod:`vitkit.quant.modules`.
"""

from .deploy import OrtModule, deploy_int8, reparameterize_, strip_quant, to_torch_dynamic
from .export import export_qdq
from .integer import IntegerViT, to_integer
from .mixed import MixedPrecisionConfig
from .modules import quantized_size_bytes, quantizers, set_quant_enabled
from .ptq import PTQConfig, apply_ptq

__all__ = [
    "IntegerViT",
    "MixedPrecisionConfig",
    "OrtModule",
    "PTQConfig",
    "apply_ptq",
    "deploy_int8",
    "export_qdq",
    "reparameterize_",
    "strip_quant",
    "to_torch_dynamic",
    "quantized_size_bytes",
    "quantizers",
    "set_quant_enabled",
    "to_integer",
]
