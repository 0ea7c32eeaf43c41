"""Quantizer math: SQNR floors, code ranges, scale searches, log and twin-uniform quantizers."""

from __future__ import annotations

import math

import pytest
import torch

from vitkit.ops import quant as Q


def _gauss(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


#: Uniform min-max quantization of N(0,1) (64×256 samples): ≈ 6 dB per bit; floors leave ~2 dB slack.
SQNR_FLOOR = {2: 0.0, 4: 13.0, 6: 25.0, 8: 37.0}


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_uniform_sqnr_floor_and_code_range(bits, symmetric):
    x = _gauss(64, 256)
    s, z = Q.search_uniform(x, bits, symmetric=symmetric, method="minmax")
    q = Q.quantize(x, s, z, bits, symmetric=symmetric)
    qmin, qmax = Q.qrange(bits, symmetric)
    assert q.min() >= qmin and q.max() <= qmax and torch.equal(q, q.round())
    if symmetric:
        assert float(z.abs().max()) == 0.0
    sq = Q.sqnr_db(x, Q.fake_quant(x, s, z, bits, symmetric=symmetric))
    assert sq >= SQNR_FLOOR.get(bits, 6.0 * bits - 12.0)


def test_more_bits_more_sqnr():
    x = _gauss(32, 128)
    vals = []
    for b in range(2, 9):
        s, z = Q.search_uniform(x, b)
        vals.append(Q.sqnr_db(x, Q.fake_quant(x, s, z, b, symmetric=False)))
    assert all(b - a > 4.0 for a, b in zip(vals, vals[1:], strict=False))


def test_per_channel_beats_per_tensor_on_uneven_channels():
    x = _gauss(64, 256) * torch.logspace(-2, 1, 256)  # channel scales over 3 decades
    s_t, z_t = Q.search_uniform(x, 8)
    s_c, z_c = Q.search_uniform(x, 8, axis=-1)
    assert s_c.shape == (256,) and s_t.shape == (1,)
    per_tensor = Q.sqnr_db(x, Q.fake_quant(x, s_t, z_t, 8, symmetric=False))
    per_channel = Q.sqnr_db(x, Q.fake_quant(x, s_c, z_c, 8, symmetric=False, axis=-1))
    assert per_channel > per_tensor + 8.0


def test_weight_axis0_per_channel():
    w = _gauss(16, 32) * torch.linspace(0.01, 5, 16).unsqueeze(1)
    s, z = Q.search_uniform(w, 4, axis=0, method="quantile")
    assert s.shape == (16,)
    assert Q.sqnr_db(w, Q.fake_quant(w, s, z, 4, symmetric=False, axis=0)) > 15.0


@pytest.mark.parametrize("method", ["percentile", "quantile", "mse"])
def test_clipping_searches_beat_minmax_on_heavy_tails(method):
    x = torch.distributions.Laplace(0.0, 1.0).sample((64, 256))
    s0, z0 = Q.search_uniform(x, 4, method="minmax")
    s, z = Q.search_uniform(x, 4, method=method, percentile=99.9)
    base = Q.sqnr_db(x, Q.fake_quant(x, s0, z0, 4, symmetric=False))
    assert Q.sqnr_db(x, Q.fake_quant(x, s, z, 4, symmetric=False)) > base


def test_quantile_matches_torch_quantile():
    x = _gauss(4, 1000)
    for q in (0.5, 0.999, 0.99999):
        torch.testing.assert_close(Q._quantile_rows(x, q), torch.quantile(x, q, dim=1))


def test_zero_is_exact():
    x = torch.cat([_gauss(100) + 5.0, torch.zeros(3)])  # range [~2, ~8] widened to include 0
    s, z = Q.search_uniform(x, 8)
    assert float(Q.fake_quant(torch.zeros(1), s, z, 8, symmetric=False)) == 0.0


def _softmax(seed=0):
    return (_gauss(8, 3, 50, 50, seed=seed) * 3).softmax(-1)


def test_log_sqrt2_beats_log2_on_softmax():
    a = _softmax()
    for bits in (4, 6, 8):
        d2 = Q.search_log2(a, bits, sqrt2=False)
        ds = Q.search_log2(a, bits, sqrt2=True)
        log2 = Q.sqnr_db(a, Q.log2_fake_quant(a, d2, bits, sqrt2=False))
        logs = Q.sqnr_db(a, Q.log2_fake_quant(a, ds, bits, sqrt2=True))
        assert logs > log2 + 4.0 and logs > 18.0


def test_log_sqrt2_levels_and_underflow():
    delta = torch.tensor([1.0])
    x = torch.tensor([1.0, 2**-0.5, 0.5, 2**-1.5, 0.0, 1e-30])
    out = Q.log2_fake_quant(x, delta, 4, sqrt2=True)
    torch.testing.assert_close(out[:4], x[:4])  # exact on the √2 grid
    assert out[4] == 0 and out[5] == 0  # zero and underflow (code ≥ 2^b) → 0
    q, under = Q.log2_codes(x, delta, 4, sqrt2=True)
    assert q.tolist()[:4] == [0, 1, 2, 3] and under.tolist()[4:] == [True, True]


def test_twin_uniform_softmax_beats_uniform():
    a = _softmax(1)
    for bits in (6, 8):
        d1 = Q.search_twin_softmax(a, bits)
        s, z = Q.search_uniform(a, bits)
        twin = Q.sqnr_db(a, Q.twin_uniform_softmax(a, d1, bits))
        assert twin > Q.sqnr_db(a, Q.fake_quant(a, s, z, bits, symmetric=False))


def test_twin_uniform_gelu_keeps_negative_part():
    g = torch.nn.functional.gelu(_gauss(64, 256) * 2)
    bits = 6
    d = Q.search_twin_gelu(g, bits)
    twin = Q.twin_uniform_gelu(g, d, bits)
    assert Q.sqnr_db(g, twin) > 25.0
    neg = g < 0  # negatives on the fixed fine grid: error ≤ half a step of 0.17/2^(b-1)
    assert (g[neg] - twin[neg]).abs().max() <= Q.GELU_MIN / 2 ** (bits - 1) / 2 + 1e-6


@pytest.mark.parametrize("bad", [1, 9, 0, 4.0, True])
def test_bad_bits(bad):
    with pytest.raises(ValueError, match="bits"):
        Q.qrange(bad, False)


def test_unknown_search():
    with pytest.raises(ValueError, match="unknown scale search"):
        Q.search_uniform(_gauss(4, 4), 8, method="kl")


def test_sqnr_exact_is_inf():
    x = _gauss(10)
    assert Q.sqnr_db(x, x.clone()) == math.inf
