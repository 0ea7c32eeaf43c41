"""Datasets: bundled real digits (``mnist5k``, ``digits``) and ``imagefolder:/path``, resized to the model."""

from .core import (
    DATASETS,
    SPLITS,
    InputSpec,
    TensorImageDataset,
    calibration_set,
    input_spec,
    iterate_batches,
    load_dataset,
)

__all__ = [
    "DATASETS",
    "SPLITS",
    "InputSpec",
    "TensorImageDataset",
    "calibration_set",
    "input_spec",
    "iterate_batches",
    "load_dataset",
]
