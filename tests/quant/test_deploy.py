"""Int8 deployment: RepQ reparameterization before per-tensor int8 runtimes (ORT dynamic, torch.ao dynamic)."""

from __future__ import annotations

import copy

import pytest
import torch

import vitkit
from vitkit.deploy import (
    OrtModule,
    deploy,
    deploy_int8,
    export_onnx,
    ort_dynamic_int8,
    reparameterize_,
    strip_quant,
)
from vitkit.errors import ConfigError, DeployError
from vitkit.quant import PTQConfig

from ..conftest import make_tiny

pytest.importorskip("onnxruntime")


def _x(n=8):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def _rel(a, b):
    return float((a - b).abs().mean() / b.std())


@torch.no_grad()
def inject_outliers(model, channels=(3, 17, 40), factor=30.0):
    """Trained-ViT-like post-LN outlier channels, function-preserving (quant.md §5.5): LN γ, β ×f, next columns ÷f."""
    for blk in model.blocks:
        for norm, lin in ((blk.norm1, blk.attn.qkv), (blk.norm2, blk.mlp.fc1)):
            norm.weight[list(channels)] *= factor
            norm.bias[list(channels)] *= factor
            lin.weight[:, list(channels)] /= factor
    return model


def test_reparameterize_float_is_exact():
    m = make_tiny("layerscale")
    ref = copy.deepcopy(m)
    x = _x()
    names = reparameterize_(m, x)
    assert len(names) == 2 * len(m.blocks)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x), atol=1e-5, rtol=1e-5)


def test_strip_quant_gives_float_model():
    m = make_tiny("vit")
    x = _x()
    with torch.no_grad():
        y0 = m(x)
    vitkit.apply_(m, PTQConfig(calib_images=8), calib=x)
    f = strip_quant(m)
    assert type(f.blocks[0].attn.qkv) is torch.nn.Linear and type(f.blocks[0].attn).__name__ == "Attention"
    with torch.no_grad():
        torch.testing.assert_close(f(x), y0, atol=1e-5, rtol=1e-5)


def test_reparameterization_rescues_per_tensor_int8_with_outliers(tmp_path):
    """With outlier channels, ORT's per-tensor dynamic int8 degrades; vitkit's reparameterized deployment does not."""
    m = inject_outliers(make_tiny("vit"))
    x = _x(16)
    with torch.no_grad():
        y0 = m(x)
    naive_path = ort_dynamic_int8(export_onnx(m, tmp_path / "fp32.onnx"), tmp_path / "naive.onnx")
    naive = _rel(OrtModule(naive_path)(x), y0)
    ours_model = deploy_int8(m, tmp_path / "ours", calib=x)
    ours = _rel(ours_model(x), y0)
    assert ours < 0.1 and ours < 0.5 * naive
    assert ours_model.file_bytes < 0.6 * sum(p.numel() * 4 for p in m.parameters())
    torch_dyn = deploy_int8(m, tmp_path / "t", calib=x, backend="torch")
    with torch.no_grad():
        assert _rel(torch_dyn(x), y0) < 0.15


def test_deploy_from_ptq_model(tmp_path):
    m = make_tiny("vit")
    x = _x()
    with torch.no_grad():
        y0 = m(x)
    vitkit.apply_(m, PTQConfig(calib_images=8), calib=x)
    dep = deploy_int8(m, tmp_path)
    assert (tmp_path / "model.int8.onnx").is_file()
    cos = torch.nn.functional.cosine_similarity(dep(x), y0, dim=-1)
    assert cos.min() > 0.99


def test_deploy_float_needs_calib(tmp_path):
    with pytest.raises(DeployError, match="calib"):
        deploy_int8(make_tiny("vit"), tmp_path)


def test_bad_deploy_requests_are_named_errors(tmp_path):
    m = make_tiny("vit")
    with pytest.raises(ConfigError, match="backend"):
        deploy_int8(m, tmp_path, calib=_x(), backend="tensorrt")
    with pytest.raises(ConfigError, match="runtime"):
        deploy(m, tmp_path, runtime="ort-int4")
    with pytest.raises(ConfigError, match="reduce"):
        deploy(m, tmp_path, calib=_x(), reduce="max")
    with pytest.raises(ConfigError, match="quantized"):
        deploy(m, tmp_path, runtime="ort-qdq")
    assert not list(tmp_path.iterdir())
    vitkit.apply_(m, PTQConfig(calib_images=8), calib=_x())
    with pytest.raises(DeployError, match="fake-quant"):
        reparameterize_(m, _x())


def test_runtime_failures_are_named_errors(tmp_path):
    with pytest.raises(DeployError, match="cannot load"):
        OrtModule(tmp_path / "missing.onnx")
    session = deploy(make_tiny("vit"), tmp_path, runtime="ort-fp32")
    with pytest.raises(DeployError, match=r"shape \(2, 3, 16, 16\)"):
        session(torch.randn(2, 3, 16, 16))


def test_one_deploy_path(tmp_path):
    """deploy_int8 and the recipe / search / export runtimes write the same int8 graph."""
    m = make_tiny("vit")
    x = _x()
    torch.manual_seed(0)
    a = deploy_int8(m, tmp_path / "a", calib=x)
    torch.manual_seed(0)
    b = deploy(m, tmp_path / "b", runtime="ort-int8", calib=x)
    assert b.graph == "dynamic" and (tmp_path / "b" / "model.int8.onnx").is_file()
    assert (tmp_path / "a" / "model.int8.onnx").read_bytes() == (tmp_path / "b" / "model.int8.onnx").read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["model.int8.onnx"]  # no fp32 leftovers
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
