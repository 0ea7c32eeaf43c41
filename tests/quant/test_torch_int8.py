"""PyTorch-native W8A8 (``torch._int_mm``): exact against the fake-quant model and the integer-only path's GEMM."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import vitkit
from vitkit.bench.env import cpu_features
from vitkit.deploy import deploy
from vitkit.deploy.torch_int8 import Int8Linear, LowPrecisionAttention, to_torch_w8a8
from vitkit.errors import ConfigError, DeployError, UnsupportedModelError
from vitkit.ops import quant as Q
from vitkit.quant import PTQConfig
from vitkit.quant.integer import _Linear

from ..conftest import make_tiny


def _x(n=8, seed=5):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _ptq(variant="vit", **cfg):
    m = make_tiny(variant)
    vitkit.apply_(m, PTQConfig(calib_images=8, **{"w_bits": 8, "a_bits": 8, **cfg}), calib=_x())
    return m


def _linear_inputs(model, x):
    """Each quantized Linear's input in the fake-quant model (before its input quantizer)."""
    seen, hooks = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and getattr(mod, "a_quant", None) is not None:
            hooks.append(mod.register_forward_pre_hook(lambda m, a, name=name: seen.__setitem__(name, a[0])))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("variant,cfg", [("vit", {}), ("layerscale", {}), ("vit", {"method": "minmax"})])
def test_static_int8_linears_match_fake_quant_within_one_lsb(variant, cfg):
    fq = _ptq(variant, **cfg)
    runner = to_torch_w8a8(fq, activations="static", compile=False)
    inputs = _linear_inputs(fq, _x(4, seed=9))
    assert inputs, "no quantized linears found"
    for name, x in inputs.items():
        int8 = runner.get_submodule(name)
        assert isinstance(int8, Int8Linear) and int8.static
        with torch.no_grad():
            ref = fq.get_submodule(name)(x)
            got = int8(x)
        lsb = int8.act_scale * int8.w_scale  # one accumulator step per output channel
        assert ((got - ref).abs() <= lsb + 1e-5 * ref.abs().max()).all(), name


def test_static_accumulator_equals_integer_path_gemm():
    fq = _ptq("vit")
    runner = to_torch_w8a8(fq, activations="static", compile=False)
    for name, x in _linear_inputs(fq, _x(4, seed=3)).items():
        lin, int8 = fq.get_submodule(name), runner.get_submodule(name)
        a_q = lin.a_quant
        codes = Q.quantize(x, a_q.scale, a_q.zero_point, a_q.bits, symmetric=a_q.symmetric).long()
        integer = _Linear(lin, name)
        want = integer(codes.reshape(-1, codes.shape[-1])) - integer.b  # the integer path's (a − z)(w − z_w)
        a8, _ = int8.codes(x)
        got = int8.accumulate(a8).long()
        assert torch.equal(got, want), name


def test_asymmetric_weights_and_symmetric_activations_stay_exact():
    torch.manual_seed(0)
    lin = nn.Linear(24, 16)
    from vitkit.quant.quantizer import UniformQuantizer

    w_q = UniformQuantizer(8, symmetric=False, channels=16, axis=0)
    a_q = UniformQuantizer(8, symmetric=True)
    x = torch.randn(10, 24)
    w_q.fit(lin.weight.detach())
    a_q.fit(x)
    lin.w_quant, lin.a_quant = w_q, a_q
    int8 = Int8Linear.from_quantized(lin)
    assert int8.has_w_shift
    ref = nn.functional.linear(a_q(x), w_q(lin.weight), lin.bias)
    torch.testing.assert_close(int8(x), ref, atol=float((int8.act_scale * int8.w_scale).max()), rtol=0)


def test_dynamic_float_model_close_and_input_untouched():
    m = make_tiny("layerscale")
    before = copy.deepcopy(m.state_dict())
    x = _x()
    runner = to_torch_w8a8(m, x, activations="dynamic", compile=False)
    with torch.no_grad():
        ref, got = m(x), runner(x)
    assert float((got - ref).abs().max()) < 0.1 * float(ref.std()) + 1e-3
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert any(isinstance(mod, Int8Linear) for mod in runner.modules())


def test_static_float_model_calibrates_per_tensor_scales():
    m = make_tiny("vit")
    x = _x()
    runner = to_torch_w8a8(m, x, activations="static", search="minmax", compile=False)
    layers = [mod for mod in runner.modules() if isinstance(mod, Int8Linear)]
    assert layers and all(mod.static for mod in layers)
    with torch.no_grad():
        assert (runner(x).argmax(-1) == m(x).argmax(-1)).float().mean() >= 0.75


def test_bf16_attention_swaps_plain_attention_only():
    m = make_tiny("vit")
    runner = to_torch_w8a8(m, _x(), attention="bf16", compile=False)
    assert sum(isinstance(mod, LowPrecisionAttention) for mod in runner.modules()) == len(m.blocks)
    with torch.no_grad():
        out = runner(_x(2))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_deploy_runtimes_and_bad_input(tmp_path):
    m = make_tiny("vit")
    for runtime in ("torch-fp32", "torch-bf16", "torch-w8a8"):
        runner = deploy(m, None, runtime=runtime, calib=_x())
        assert runner.runtime == runtime
    with pytest.raises(UnsupportedModelError, match="uniform input quantizers"):
        to_torch_w8a8(_ptq("vit", method="ptq4vit"), activations="static", compile=False)
    with pytest.raises(ConfigError, match="activations"):
        to_torch_w8a8(m, _x(), activations="int4")
    with pytest.raises(DeployError, match="calibration images"):
        to_torch_w8a8(m, None)


@pytest.mark.slow  # one torch.compile (Inductor C++ codegen) of a tiny model
def test_compiled_runner_matches_eager():
    m = make_tiny("vit")
    x = _x()
    eager = to_torch_w8a8(m, x, activations="static", attention="bf16", compile=False)
    compiled = to_torch_w8a8(m, x, activations="static", attention="bf16", compile=True)
    with torch.no_grad():
        a, b = eager(x), compiled(x)
    assert compiled.outlier_channels == {} and torch.isfinite(b).all()
    assert float((a - b).abs().max()) <= 0.05 * float(a.abs().max()) + 1e-4


VNNI = bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(cpu_features()))


def test_onednn_linear_matches_int_mm_linear():
    from vitkit.deploy.onednn_int8 import OneDNNInt8Linear

    m = make_tiny("vit")
    runner = to_torch_w8a8(m, _x(), activations="static", compile=False)  # asymmetric uint8 acts, symmetric weights
    inputs, hooks = {}, []
    for name, layer in runner.named_modules():
        if isinstance(layer, Int8Linear):
            hooks.append(layer.register_forward_pre_hook(lambda mod, a, name=name: inputs.__setitem__(name, a[0])))
    with torch.no_grad():
        runner(_x(4, seed=2))
    for h in hooks:
        h.remove()
    assert inputs
    for name, x in inputs.items():
        layer = runner.get_submodule(name)
        with torch.no_grad():
            want, got = layer(x), OneDNNInt8Linear(layer)(x)
        lsb = layer.act_scale * layer.w_scale
        # exact with VNNI (u8·s8 dot products without 16-bit saturation); close elsewhere
        tol = lsb + 1e-5 * want.abs().max() if VNNI else 0.05 * want.abs().max()
        assert ((got - want).abs() <= tol).all(), name


def test_onednn_model_fuses_gelu_and_requant_and_agrees():
    from vitkit.deploy.onednn_int8 import OneDNNInt8Linear, to_onednn_

    x = _x(8, seed=4)
    runner = to_torch_w8a8(make_tiny("vit"), _x(), activations="static", compile=False)
    fused = copy.deepcopy(runner)
    moved = to_onednn_(fused)
    assert moved == sum(isinstance(m, Int8Linear) for m in runner.modules())
    fc1 = fused.blocks[0].mlp.fc1
    assert isinstance(fc1, OneDNNInt8Linear) and fc1.gelu and fc1.out_dtype == torch.uint8
    assert isinstance(fused.blocks[0].mlp.act, nn.Identity)
    with torch.no_grad():
        a, b = runner(x), fused(x)
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.75
    assert float((a - b).abs().max()) <= 0.1 * float(a.abs().max()) + 1e-4
