"""Outlier input channels kept in float for per-tensor int8 runtimes (LLM.int8()-style decomposition)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from vitkit.deploy import OrtModule, deploy_int8, to_torch_dynamic
from vitkit.ops.quant import outlier_channels
from vitkit.quant.outliers import OutlierSplitLinear, split_outlier_inputs_

from ..conftest import make_tiny


def _x(n=8):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(11))


@torch.no_grad()
def massive_fc2_channel(model, block=1, channel=5, shift=1000.0):
    """A real-ViT-like massive post-GELU activation (the AugReg ViT-Ti has |x| = 213 in one fc2 input channel):
    the fc1 bias of one neuron pushed up, so that channel of every token is large and positive."""
    model.blocks[block].mlp.fc1.bias[channel] += shift
    return model


def _rel(a, b):
    return float((a - b).abs().mean() / b.std())


def test_outlier_channels_relative_to_median():
    absmax = torch.tensor([1.0, 2.0, 1.5, 30.0, 1.2, 9.0])
    assert outlier_channels(absmax, 8.0).tolist() == [3]
    assert outlier_channels(absmax, 4.0).tolist() == [3, 5]
    assert outlier_channels(torch.ones(7), 8.0).numel() == 0
    with pytest.raises(ValueError, match="ratio"):
        outlier_channels(absmax, 1.0)
    with pytest.raises(ValueError, match="vector"):
        outlier_channels(absmax[None], 8.0)


def test_split_linear_is_exact_in_float():
    torch.manual_seed(0)
    lin = nn.Linear(12, 5)
    split = OutlierSplitLinear(lin, torch.tensor([2, 9]))
    x = torch.randn(3, 7, 12)
    torch.testing.assert_close(split(x), lin(x), atol=1e-6, rtol=1e-6)


def test_split_finds_the_massive_channel_and_keeps_the_function():
    model = massive_fc2_channel(make_tiny("vit"))
    ref = copy.deepcopy(model)
    x = _x()
    found = split_outlier_inputs_(model, x, ratio=8.0)
    assert found == {"blocks.1.mlp.fc2": [5]}
    assert isinstance(model.blocks[1].mlp.fc2, OutlierSplitLinear)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-4, rtol=1e-4)
    assert split_outlier_inputs_(make_tiny("vit"), x) == {}  # nothing to split on an ordinary model


def _mlp_out(model, x, block=1):
    got = {}
    h = model.blocks[block].mlp.register_forward_hook(lambda m, a, out: got.setdefault("y", out.detach()))
    with torch.no_grad():
        model(x)
    h.remove()
    return got["y"]


def test_torch_int8_keeps_the_massive_channel_float():
    """Per-tensor dynamic int8 of fc2's input collapses under a massive channel; the split keeps it float."""
    model = massive_fc2_channel(make_tiny("vit"))
    x = _x(16)
    y0 = _mlp_out(model, x)
    plain = deploy_int8(model, None, calib=x, backend="torch", outliers=None)
    split = deploy_int8(model, None, calib=x, backend="torch")
    assert isinstance(split.blocks[1].mlp.fc2, OutlierSplitLinear)
    assert type(split.blocks[1].mlp.fc2.outlier) is nn.Linear  # float part not quantized
    assert type(split.blocks[1].mlp.fc2.main) is not nn.Linear  # int8 part quantized
    assert _rel(_mlp_out(split, x), y0) < 0.2 * _rel(_mlp_out(plain, x), y0)


def test_ort_int8_leaves_outlier_matmuls_float(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    model = massive_fc2_channel(make_tiny("vit"))
    x = _x(16)
    with torch.no_grad():
        y0 = model(x)
    plain = deploy_int8(model, tmp_path / "plain", calib=x, outliers=None)
    split = deploy_int8(model, tmp_path / "split", calib=x)
    assert isinstance(split, OrtModule)
    assert split.outlier_channels == {"blocks.1.mlp.fc2": [5]} and plain.outlier_channels == {}
    nodes = onnx.load(str(tmp_path / "split" / "model.int8.onnx")).graph.node
    outlier_ops = {n.op_type for n in nodes if "/outlier/" in n.name}
    assert "MatMul" in outlier_ops and not outlier_ops & {"MatMulInteger", "DynamicQuantizeLinear"}
    assert [n for n in nodes if "/fc2/main/" in n.name and n.op_type == "MatMulInteger"]
    assert _rel(split(x), y0) <= _rel(plain(x), y0)
    assert type(to_torch_dynamic(model).blocks[1].mlp.fc2).__name__ != "OutlierSplitLinear"  # needs calib


def test_ptq_outlier_ratio_simulates_the_split(tmp_path):
    """PTQConfig(outlier_ratio=...): the massive channel passes the fc2 input quantizer in float, the rest is
    quantized on a scale searched without it; reload, deployment and the refusing exporters agree."""
    import vitkit
    from vitkit.deploy import export_qdq
    from vitkit.errors import ConfigError, UnsupportedModelError
    from vitkit.quant import PTQConfig, quantizers, to_integer

    x = _x(8)
    ref = massive_fc2_channel(make_tiny("vit"))
    plain, split = copy.deepcopy(ref), copy.deepcopy(ref)
    vitkit.apply_(plain, PTQConfig(calib_images=8), calib=x)
    vitkit.apply_(split, PTQConfig(calib_images=8, outlier_ratio=8.0), calib=x)
    assert split.vitkit_steps[-1].decisions["float_channels"] == {"blocks.1.mlp.fc2": [5]}
    q = quantizers(split)["blocks.1.mlp.fc2.a_quant"]
    assert q.float_channels == [5] and q.scale.item() < 0.1 * quantizers(plain)["blocks.1.mlp.fc2.a_quant"].scale.item()
    with torch.no_grad():
        y0 = ref(x)
        assert _rel(split(x), y0) < _rel(plain(x), y0)
    vitkit.save_artifact(split, None, None, tmp_path / "art")
    with torch.no_grad():
        torch.testing.assert_close(vitkit.load(tmp_path / "art")(x), split(x), atol=1e-5, rtol=1e-5)
    dep = deploy_int8(split, None, backend="torch")  # no calib needed: the simulated channels are deployed
    assert isinstance(dep.blocks[1].mlp.fc2, OutlierSplitLinear) and dep.blocks[1].mlp.fc2.idx.tolist() == [5]
    with pytest.raises(UnsupportedModelError, match="outlier_ratio"):
        export_qdq(split, tmp_path / "q.onnx")
    with pytest.raises(UnsupportedModelError, match="outlier_ratio"):
        to_integer(split)
    with pytest.raises(ConfigError, match="outlier_ratio"):
        PTQConfig(outlier_ratio=1.0)
