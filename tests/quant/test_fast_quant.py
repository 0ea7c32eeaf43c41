"""Eval-time fast paths of vitkit.ops.quant give the same values (torch.equal) as the reference formulas."""

from __future__ import annotations

import math

import pytest
import torch

from vitkit.ops import quant as Q


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
