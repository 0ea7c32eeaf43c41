"""Patched models export to ONNX (loaded by ONNX Runtime, matching PyTorch) and compile with torch.compile."""

from __future__ import annotations

import time
import warnings

import pytest
import torch

import vitkit
from vitkit.tokens import EViTConfig, HiPruneConfig, PiToMeConfig, ToMeConfig

from ..conftest import make_tiny

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

CASES = {
    "tome": ("vit", ToMeConfig(r=3)),
    "tome-avgpool": ("avgpool", ToMeConfig(r=3)),
    "tome-registers": ("registers", ToMeConfig(r=2)),
    "evit": ("distilled", EViTConfig(keep_rate=0.5)),
    "pitome": ("layerscale", PiToMeConfig(ratio=0.8)),
    "hiprune": ("qknorm", HiPruneConfig(keep=0.5, object_layer=0, register_layer=1)),
}


def export_onnx(model: torch.nn.Module, x: torch.Tensor, path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), opset_version=17, dynamo=False, input_names=["x"])


@pytest.mark.parametrize("case", list(CASES))
def test_onnx_runtime_matches_pytorch(case, tmp_path):
    variant, cfg = CASES[case]
    model = make_tiny(variant)
    vitkit.apply_(model, cfg)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    export_onnx(model, x, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"x": x.numpy()})
    with torch.no_grad():
        ref = model(x)
    assert torch.from_numpy(got).sub(ref).abs().max().item() <= 1e-4


def test_torch_compile_matches_eager():
    model = make_tiny("vit", depth=2)
    vitkit.apply_(model, ToMeConfig(r=3))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
        compiled = torch.compile(model, fullgraph=True, backend="eager")
        t0 = time.perf_counter()
        out = compiled(x)
    assert time.perf_counter() - t0 < 120
    assert torch.allclose(out, ref, atol=1e-5)


@pytest.mark.slow
def test_torch_compile_inductor():
    model = make_tiny("vit", depth=2)
    vitkit.apply_(model, ToMeConfig(r=3))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model, fullgraph=True)(x)
    assert torch.allclose(out, ref, atol=1e-4)
