"""PTQ4ViT (Yuan et al., ECCV 2022): twin-uniform quantizers for post-softmax and post-GELU values.

Post-softmax values crowd near 0 with a few large ones, and post-GELU values have a short negative range and a
long positive tail; PTQ4ViT quantizes each with **two uniform ranges** sharing one code budget (R1 fine near 0,
R2 = 2^k·R1 coarse for the rest; :class:`~vitkit.quant.quantizer.TwinUniformQuantizer`), and searches every
scaling factor over clipping candidates. PTQ4ViT scores the candidates with its Hessian-guided metric; vitkit
deliberately uses the plain output MSE instead (``search="mse"``), because the Hessian-guided metric's gradient
is numerically zero in parallel calibration (hahnyuan/PTQ4ViT#23), and calibrates sequentially (upstream
quantizers active) like the other methods.
"""

from __future__ import annotations

from .base import Calibrator, register_calibrator

PTQ4VIT = register_calibrator(
    Calibrator(
        name="ptq4vit",
        paper="PTQ4ViT (Yuan et al., ECCV 2022)",
        softmax="twin",
        post_gelu="twin",
        act_search="mse",
        weight_search="mse",
    )
)
