"""Eval-time speed-ups keep the simulation exact: cached fake-quantized weights and the fast activation paths give
the same outputs (torch.equal) as recomputing everything with the reference formulas on every forward."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import vitkit
from vitkit.ops import quant as Q
from vitkit.quant import MixedPrecisionConfig, PTQConfig, quantizers, set_quant_enabled
from vitkit.quant.modules import QuantLinear
from vitkit.quant.quantizer import clear_quant_cache, reference_quant

from ..conftest import make_tiny


def _x(n=4, seed=3):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _outputs(model, x):
    """(first cached forward, second cached forward, reference forward), all in inference mode."""
    with torch.inference_mode():
        first, second = model(x), model(x)
        with reference_quant():
            ref = model(x)
    return first, second, ref


def _assert_exact(model, x):
    first, second, ref = _outputs(model, x)
    assert torch.equal(first, ref) and torch.equal(second, ref)
    return ref


# -- ops: fast paths against the reference functions ------------------------------------------------------------
def _values(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * 3
    x[: n // 4] = torch.round(x[: n // 4] * 8) / 8  # many exact ties x/s = k + 0.5
    x[:2] = torch.tensor([0.0, -0.0])
    return x


@pytest.mark.parametrize("n", [7, 40_003])  # below and above the vectorised / parallel chunk sizes
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_fake_quant_shifted_equals_reference(n, bits, symmetric):
    x = _values(n, bits)
    for method in ("minmax", "percentile"):
        s, z = Q.search_uniform(x, bits, symmetric=symmetric, method=method, percentile=99.0)
        ties = (torch.arange(-300, 300) + 0.5) * s  # x/s at (or one ulp from) k + 0.5: where rounding is decided
        y = torch.cat([x, ties, ties.nextafter(torch.tensor(math.inf)), ties.nextafter(torch.tensor(-math.inf))])
        qmin, qmax = Q.qrange(bits, symmetric)
        fast = Q.fake_quant_shifted(y, s, qmin - float(z), qmax - float(z))
        assert torch.equal(fast, Q.fake_quant(y, s, z, bits, symmetric=symmetric))


@pytest.mark.parametrize("n", [7, 40_003])
@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("sqrt2", [True, False])
def test_log2_levels_equal_reference(n, bits, sqrt2):
    g = torch.Generator().manual_seed(n + bits)
    a = torch.rand(n, generator=g).pow(12)  # spans every code, underflow included
    a[:3] = torch.tensor([0.0, 1.0, 2.0])  # exact zero (log2 → −inf), the top code, above delta
    delta = Q.search_log2(a, bits, sqrt2=sqrt2)
    levels = Q.log2_levels(delta, bits, sqrt2=sqrt2)
    fast = Q.log2_fake_quant_levels(a, delta, bits, levels, sqrt2=sqrt2)
    assert torch.equal(fast, Q.log2_fake_quant(a, delta, bits, sqrt2=sqrt2))
    nan = Q.log2_fake_quant_levels(torch.tensor([float("nan"), 0.5]), delta, bits, levels, sqrt2=sqrt2)
    assert nan[0].isnan() and not nan[1].isnan()


@pytest.mark.parametrize("n", [7, 40_003])
@pytest.mark.parametrize("bits", [3, 4, 8])
def test_twin_fast_equals_reference(n, bits):
    g = torch.Generator().manual_seed(n + bits)
    a = torch.randn(n, 8, generator=g).softmax(-1).reshape(-1)
    d1 = Q.search_twin_softmax(a, bits)
    assert torch.equal(Q.twin_uniform_softmax_fast(a, d1, bits), Q.twin_uniform_softmax(a, d1, bits))
    h = torch.nn.functional.gelu(_values(n, bits))
    dp = Q.search_twin_gelu(h, bits)
    assert torch.equal(Q.twin_uniform_gelu_fast(h, dp, bits), Q.twin_uniform_gelu(h, dp, bits))


# -- models: every ptq method, cached path == per-forward recomputation ---------------------------------------------
CONFIGS = {
    "minmax": PTQConfig(w_bits=8, a_bits=8, method="minmax", calib_images=4),
    "percentile": PTQConfig(w_bits=8, a_bits=8, method="percentile", calib_images=4),
    "ptq4vit": PTQConfig(w_bits=6, a_bits=6, method="ptq4vit", calib_images=4),
    "repq": PTQConfig(w_bits=4, a_bits=4, method="repq", calib_images=4),
    "dopq": PTQConfig(w_bits=4, a_bits=4, method="dopq", calib_images=4),
    "repq_log2_reconstructed": PTQConfig(
        w_bits=4, a_bits=4, method="repq", softmax="log2", calib_images=4, reconstruct_iters=2
    ),
    "mixed_ptq": MixedPrecisionConfig(avg_bits=5.0, a_bits=6, calib_images=4),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_path_equals_recomputation_and_survives_save_load(name, tmp_path):
    model = make_tiny("vit")
    vitkit.apply_(model, CONFIGS[name], calib=_x())
    x = _x(3, seed=11)
    ref = _assert_exact(model, x)
    assert model.blocks[0].attn.qkv.__dict__.get("_vitkit_wq") is not None  # the weight really is cached
    with torch.no_grad():  # grad mode off without inference mode: same cache, same values
        assert torch.equal(model(x), ref)
    back = vitkit.load(vitkit.save_artifact(model, None, None, tmp_path / "art"))
    assert torch.equal(_assert_exact(back, x), ref)
    # a packed weight reloads as its own fake-quantized value: the cache shares it instead of copying
    lin = back.blocks[1].mlp.fc1
    with torch.no_grad():
        assert lin.quant_weight().data_ptr() == lin.weight.data_ptr()


def test_cache_follows_weight_and_scale_changes():
    model, other = make_tiny("vit"), make_tiny("vit", seed=1)
    cfg = PTQConfig(w_bits=8, a_bits=8, method="minmax", calib_images=4)
    vitkit.apply_(model, cfg, calib=_x())
    vitkit.apply_(other, cfg, calib=_x())
    x = _x(2, seed=5)
    before = _assert_exact(model, x)
    fc1 = model.blocks[0].mlp.fc1
    with torch.no_grad():
        fc1.weight.mul_(1.5)  # in place: version counter
    assert not torch.equal(_assert_exact(model, x), before)
    with torch.no_grad():
        fc1.w_quant.scale.mul_(2.0)  # quantizer parameters too
    _assert_exact(model, x)
    fc1.weight = torch.nn.Parameter(fc1.weight.detach() * 0.5)  # a new parameter object
    _assert_exact(model, x)
    model.load_state_dict(other.state_dict())  # strict load of packed codes into the same parameters
    assert torch.equal(_assert_exact(model, x), _assert_exact(other, x))
    set_quant_enabled(model, False)
    _assert_exact(model, x)
    set_quant_enabled(model, True)
    assert torch.equal(_assert_exact(model, x), _assert_exact(other, x))


def test_changes_through_data_need_clear_quant_cache():
    model = make_tiny("vit")
    vitkit.apply_(model, PTQConfig(method="minmax", calib_images=4), calib=_x())
    x = _x(2)
    _assert_exact(model, x)
    model.head.weight.data.mul_(3.0)  # .data has its own version counter: invisible to the cache
    clear_quant_cache(model)
    _assert_exact(model, x)


def test_gradients_still_reach_weights_and_copies_recompute():
    model = make_tiny("vit")
    vitkit.apply_(model, PTQConfig(method="repq", calib_images=4), calib=_x())
    x = _x(2)
    ref = _assert_exact(model, x)
    for p in model.parameters():
        p.requires_grad_(True)
    out = model(x)  # grad mode: the live path, autograd sees the weight quantizer
    assert torch.equal(out.detach(), ref)
    out.sum().backward()
    qlin = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert all(m.weight.grad is not None for m in qlin)
    dup = copy.deepcopy(model)
    assert dup.blocks[0].attn.qkv.__dict__.get("_vitkit_wq") is None  # deepcopy carries no cached tensor
    assert torch.equal(_assert_exact(dup, x), ref)
    assert len(quantizers(dup)) == len(quantizers(model))
