"""I-ViT integer-only ops: dyadic requantization, integer sqrt, I-LayerNorm, Shiftmax."""

from __future__ import annotations

import torch

from vitkit.ops import quant_int as I


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_dyadic_requantize_within_one_lsb():
    for scale in (0.0123, 0.5, 3e-5, 1.7):
        m, c = I.dyadic(scale)
        assert m < 2**31 and abs(m / 2**c - scale) / scale < 1e-6
        q = torch.randint(-(2**20), 2**20, (2000,), generator=_g())
        assert (I.requantize(q, m, c) - torch.round(q.double() * scale)).abs().max() <= 1


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


def test_shiftmax_close_to_twin_and_softmax():
    s = 0.05
    x = (torch.randn(4, 3, 50, 50, generator=_g(2)) * 2 / s).round().long()
    codes = I.shiftmax(x, s)
    assert codes.min() >= 0 and codes.max() <= 128
    assert (codes - I.shiftmax_reference(x, s)).abs().max() <= 2  # documented: 2 LSB, not 1
    assert (codes / 128 - (x * s).softmax(-1)).abs().max() < 0.04  # the approximation itself (I-ViT needs QAT)
