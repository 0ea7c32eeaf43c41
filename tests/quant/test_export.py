"""ONNX QDQ export with vitkit's calibrated scales, run in ONNX Runtime, against the fake-quant model."""

from __future__ import annotations

import copy

import pytest
import torch

import vitkit
from vitkit.deploy import OrtModule, export_qdq
from vitkit.errors import ConfigError, UnsupportedModelError
from vitkit.quant import PTQConfig

from ..conftest import make_tiny

pytest.importorskip("onnxruntime")


def _x(n=8, seed=5):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _ptq(variant="vit", **cfg):
    m = make_tiny(variant)
    vitkit.apply_(m, PTQConfig(calib_images=8, **cfg), calib=_x())
    return m


@pytest.mark.parametrize("method", ["repq", "minmax"])
def test_qdq_matches_fake_quant_and_stores_int8_weights(tmp_path, method):
    import onnx

    m = _ptq("layerscale", method=method)
    before = copy.deepcopy(m.state_dict())
    path = export_qdq(m, tmp_path / "m.qdq.onnx", _x(1))
    g = onnx.load(str(path))
    ops = [n.op_type for n in g.graph.node]
    assert ops.count("DequantizeLinear") > ops.count("QuantizeLinear") > 0  # weights: DQ only (stored as codes)
    quantized = {f"{n}.weight" for n, mod in m.named_modules() if hasattr(mod, "w_quant")}
    floats = {i.name for i in g.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert quantized and not quantized & floats
    x = _x(16, seed=3)
    with torch.no_grad():
        ref = m(x)
    out = OrtModule(path)(x)
    # ORT's int8 kernels and fp32 fake-quant can round one activation to the neighbouring code on some CPUs
    # (measured 0.2% of max here); a wrong scale or zero point is off by far more than 1%
    assert (out - ref).abs().max() < 1e-2 * ref.abs().max() + 1e-4
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k])


def test_qdq_file_smaller_than_float(tmp_path):
    from vitkit.deploy import export_onnx

    m = _ptq()
    q = export_qdq(m, tmp_path / "q.onnx")
    f = export_onnx(m, tmp_path / "f.onnx")
    assert q.stat().st_size < 0.6 * f.stat().st_size


def test_qdq_bad_input(tmp_path):
    with pytest.raises(UnsupportedModelError, match="ptq-calibrated"):
        export_qdq(make_tiny("vit"), tmp_path / "a.onnx")
    with pytest.raises(ConfigError, match="8-bit"):
        export_qdq(_ptq(w_bits=4, a_bits=4), tmp_path / "a.onnx")
    with pytest.raises(UnsupportedModelError, match="TwinUniform"):
        export_qdq(_ptq(method="ptq4vit"), tmp_path / "a.onnx")
    with pytest.raises(ConfigError, match="expects"):
        export_qdq(_ptq(), tmp_path / "a.onnx", torch.randn(1, 3, 16, 16))
    assert not (tmp_path / "a.onnx").exists()


@pytest.mark.slow
def test_reference_model_qdq_agrees_with_fake_quant(tmp_path):
    from vitkit.demo import reference_artifact

    ref = vitkit.load(reference_artifact()).eval()
    train = vitkit.data.load_dataset("mnist5k", "train", model=ref)
    test = vitkit.data.load_dataset("mnist5k", "test", model=ref)
    vitkit.apply_(ref, PTQConfig(w_bits=8, a_bits=8, method="repq"), calib=vitkit.data.calibration_set(train, 32))
    xs = torch.stack([test[i][0] for i in range(500)])
    ort = OrtModule(export_qdq(ref, tmp_path / "ref.onnx"))
    with torch.no_grad():
        fq = ref(xs)
    out = ort(xs)
    assert (out.argmax(1) == fq.argmax(1)).float().mean() >= 0.99
    assert (out - fq).abs().max() < 0.05 * fq.abs().max()
