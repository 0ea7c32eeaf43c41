"""Quant tests run single-threaded: calibration is many small ops, which 2 intra-op threads slow down badly
on a shared 2-core machine (measured 30× on a loaded box); results do not depend on the thread count."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
