"""I-ViT integer-only ops, each against its float twin: dyadic requant, integer sqrt, I-LayerNorm, Shiftmax,
ShiftGELU / λ-ShiftGELU, integer log2/log√2 codes."""

from __future__ import annotations

import pytest
import torch

from vitkit.ops import quant as Q
from vitkit.ops import quant_int as I


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_dyadic_requantize_within_one_lsb():
    for scale in (0.0123, 0.5, 3e-5, 1.7):
        m, c = I.dyadic(scale)
        assert m < 2**31 and abs(m / 2**c - scale) / scale < 1e-6
        q = torch.randint(-(2**20), 2**20, (2000,), generator=_g())
        assert (I.requantize(q, m, c) - torch.round(q.double() * scale)).abs().max() <= 1


def test_per_channel_requant_with_offset_within_one_lsb():
    mult = torch.tensor([3e-6, -2e-5, 0.0, 1e-7], dtype=torch.float64)  # signs and zero allowed
    add = torch.tensor([127.3, -5.5, 3.0, 0.2], dtype=torch.float64)
    m, b, c = I.make_requant(mult, add, q_bits=24)
    q = torch.randint(-(2**23), 2**23, (500, 4), generator=_g(3))
    assert (I.apply_requant(q, m, b, c) - torch.round(q.double() * mult + add)).abs().max() <= 1


def test_isqrt_is_exact_floor_sqrt():
    v = torch.cat([torch.randint(0, 2**40, (2000,), generator=_g()), torch.tensor([0, 1, 2, 3, 4, 2**32])])
    k = I.isqrt(v, steps=30)
    assert bool(((k * k <= v) & ((k + 1) * (k + 1) > v)).all())


def test_i_layernorm_within_one_int8_lsb_of_float():
    s = 0.05
    x = (torch.randn(8, 20, 96, generator=_g(1)) * 3 / s).round().long()
    codes, out_scale = I.i_layernorm(x)
    ref = torch.nn.functional.layer_norm(x.double() * s, (96,))
    step = 8.0 / 127  # int8 output grid over ±8 standard deviations
    m, c = I.dyadic(out_scale / step)
    ours = I.requantize(codes, m, c)
    assert (ours - torch.round(ref / step)).abs().max() <= 1


@pytest.mark.parametrize("scale", [0.3, 0.05, 0.002])
@pytest.mark.parametrize("out_bits", [8, 16])
def test_shiftmax_within_one_lsb_of_twin(scale, out_bits):
    x = (torch.randn(4, 3, 50, 50, generator=_g(2)) * 2 / scale).round().long()
    codes = I.shiftmax(x, scale, out_bits=out_bits)
    top = 2 ** (out_bits - 1)
    assert codes.min() >= 0 and codes.max() <= top
    assert (codes - I.shiftmax_reference(x, scale, out_bits=out_bits)).abs().max() <= 1
    # the approximation itself (I-ViT recovers it with QAT, vitkit measures what it costs in to_integer)
    assert (codes / top - (x * scale).softmax(-1)).abs().max() < 0.03


@pytest.mark.parametrize("scale", [0.3, 0.05, 0.002])
@pytest.mark.parametrize("lam", [1.702, 2.5])
def test_shift_gelu_within_one_int8_lsb_of_twin(scale, lam):
    x = (torch.randn(20000, generator=_g(4)) * 3 / scale).round().long()
    fn = I.shift_gelu if lam == 1.702 else lambda *a, **k: I.lambda_shift_gelu(*a, lam=lam)
    codes, out_scale = fn(x, scale)
    twin = I.shift_gelu_reference(x, scale, lam=lam)
    step = 8.0 / 127
    m, c = I.dyadic(out_scale / step)
    assert (I.requantize(codes, m, c) - torch.round(twin / step)).abs().max() <= 1
    if lam == 1.702:  # x·σ(1.702x) itself is within ~0.025 of exact GELU
        assert (codes * out_scale - torch.nn.functional.gelu(x.double() * scale)).abs().max() < 0.03


def test_lambda_changes_the_function():
    x = torch.arange(-2000, 2001)
    a, s = I.shift_gelu(x, 0.002)
    b, _ = I.lambda_shift_gelu(x, 0.002, lam=4.0)
    assert (a - b).abs().max() * s > 0.05  # larger λ: closer to ReLU, shorter negative tail
    assert (b * s)[:1000].min() > (a * s)[:1000].min()


@pytest.mark.parametrize("sqrt2", [True, False])
def test_integer_log2_codes_equal_float_codes(sqrt2):
    in_scale = 2.0**-15
    p = torch.cat([torch.randint(0, 2**15 + 1, (50000,), generator=_g(5)), torch.tensor([0, 1, 2**15])])
    thr = I.log2_thresholds(0.7, 8, in_scale, sqrt2=sqrt2)
    codes, under = I.log2_codes_int(p, thr)
    ref, ref_under = Q.log2_codes(p.double() * in_scale, torch.tensor([0.7], dtype=torch.float64), 8, sqrt2=sqrt2)
    assert torch.equal(codes, ref.long()) and torch.equal(under, ref_under)
