"""DopQ-ViT (Yang et al., 2024), v1: RepQ-ViT with the median post-LN scale (MOSF).

DopQ-ViT observes that RepQ-ViT's mean of the per-channel post-LayerNorm scales (eq. 7 there) is pulled up by a
few outlier channels, and reparameterizes with the **median** channel scale instead — ``s̃ = median(s)``,
``z̃ = round(median(z))`` — so that the bulk of the channels keep their resolution after the fold. Everything
else is RepQ-ViT (:mod:`.repq`). DopQ-ViT's TanQ softmax quantizer is *not* implemented (its formula is not in
the sources available here): the post-softmax map keeps RepQ-ViT's log√2 quantizer.
"""

from __future__ import annotations

from .base import register_calibrator
from .repq import RepQCalibrator

DOPQ = register_calibrator(
    RepQCalibrator(
        name="dopq",
        paper="DopQ-ViT (Yang et al., 2024) on RepQ-ViT",
        softmax="log_sqrt2",
        act_search="quantile",
        weight_search="quantile",
        reduce="median",
    )
)
