"""The min-max baseline: per-tensor activation and per-output-channel weight ranges from the observed
minimum and maximum, a uniform post-softmax quantizer — the naive PTQ every ViT paper compares against."""

from __future__ import annotations

from .base import Calibrator, register_calibrator

MINMAX = register_calibrator(
    Calibrator(name="minmax", paper="min-max calibration baseline", act_search="minmax", weight_search="minmax")
)
