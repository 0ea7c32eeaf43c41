"""The percentile baseline: activation ranges clipped at ``PTQConfig.percentile`` of the observed values (99.99 by
default, so that rare outliers do not stretch the scale), weights by min-max, a uniform post-softmax quantizer."""

from __future__ import annotations

from .base import Calibrator, register_calibrator

PERCENTILE = register_calibrator(
    Calibrator(
        name="percentile", paper="percentile calibration baseline", act_search="percentile", weight_search="minmax"
    )
)
