"""Deployed int8 on every model family: PyTorch-native W8A8 (``torch._int_mm``, and oneDNN's qlinear with the MLP's
GELU fused where the MLP is a plain one) and ONNX Runtime dynamic int8 run and stay close to the float model."""

from __future__ import annotations

import pytest
import torch

from vitkit.deploy import deploy
from vitkit.deploy.onednn_int8 import onednn_available, to_onednn_
from vitkit.deploy.torch_int8 import Int8Linear, int_mm_available, to_torch_w8a8

from ..conftest import FAMILIES, family_images, make_family

NAMES = list(FAMILIES)


def _close(runner, model, x, tol):
    with torch.no_grad():
        ref, out = model(x), runner(x)
    assert torch.isfinite(out).all()
    err = (out - ref).abs().max() / ref.abs().max()
    assert err < tol, f"relative max error {err:.3g}"


@pytest.mark.skipif(not int_mm_available(), reason="torch._int_mm does not run in this PyTorch build")
@pytest.mark.parametrize("family", NAMES)
def test_torch_w8a8_runs_every_linear_in_int8(family):
    model, x = make_family(family), family_images(family, 8)
    runner = to_torch_w8a8(model, x, activations="static", compile=False)
    assert sum(isinstance(m, Int8Linear) for m in runner.modules()) >= 4
    _close(runner, model, x, 0.15)
    if onednn_available():
        moved = to_onednn_(runner)
        assert moved >= 4
        _close(runner, model, x, 0.15)


@pytest.mark.parametrize("family", NAMES)
def test_ort_int8_deploys(family, tmp_path):
    pytest.importorskip("onnxruntime")
    model, x = make_family(family), family_images(family, 8)
    runner = deploy(model, tmp_path, runtime="ort-int8", calib=x, example=x[:2])
    _close(runner, model, x, 0.15)
