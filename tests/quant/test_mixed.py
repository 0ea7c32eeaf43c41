"""Mixed precision: budgeted greedy allocation, scorers, artifact round trip, bad config."""

from __future__ import annotations

import pytest
import torch

import vitkit
from vitkit.errors import ConfigError
from vitkit.quant import MixedPrecisionConfig
from vitkit.quant.mixed import allocate_bits

from ..conftest import make_tiny


def test_allocation_respects_budget_and_prefers_sensitive_layers():
    scores = {"a": {4: 10.0, 6: 1.0, 8: 0.1}, "b": {4: 1.0, 6: 0.5, 8: 0.4}, "c": {4: 0.1, 6: 0.05, 8: 0.0}}
    sizes = {"a": 100, "b": 100, "c": 100}
    bits = allocate_bits(scores, sizes, (4, 6, 8), 5.0)
    assert sum(bits[n] * sizes[n] for n in bits) <= 5.0 * 300
    assert bits["a"] > bits["c"]
    assert allocate_bits(scores, sizes, (4, 6, 8), 8.0) == {"a": 8, "b": 8, "c": 8}
    assert allocate_bits(scores, sizes, (4, 6, 8), 4.0) == {"a": 4, "b": 4, "c": 4}


@pytest.mark.parametrize("score", ["hessian", "relevance"])
def test_mixed_ptq_round_trip(score, tmp_path):
    model = make_tiny("vit")
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rep = vitkit.apply_(model, MixedPrecisionConfig(avg_bits=5.0, score=score, calib_images=8), calib=x)
    d = rep.steps[0].decisions
    assert 4.0 <= d["avg_bits"] <= 5.0 and set(d["layer_bits"].values()) <= {4, 6, 8}
    vitkit.save_artifact(model, None, None, tmp_path / "a")
    with torch.no_grad():
        torch.testing.assert_close(vitkit.load(tmp_path / "a")(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs", [{"avg_bits": 9}, {"candidates": (1, 4)}, {"score": "random"}, {"a_bits": 12}, {"method": "x"}]
)
def test_bad_mixed_config(kwargs):
    with pytest.raises(ConfigError):
        MixedPrecisionConfig(**kwargs)
