"""APHQ-ViT-style block reconstruction (PTQConfig.reconstruct_iters): off by default, lowers the block error."""

from __future__ import annotations

import copy

import pytest
import torch

import vitkit
from vitkit.errors import ConfigError
from vitkit.quant import PTQConfig
from vitkit.quant.reconstruct import aph_weights

from ..conftest import make_tiny


def _x(n=8, seed=5):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_aph_weights_positive_mean_one():
    m = make_tiny("vit")
    h = aph_weights(m, _x(), 1)
    assert h.shape == (1, 17, 48) and bool((h >= 0).all()) and abs(float(h.mean()) - 1) < 1e-4


def test_reconstruction_lowers_block_error_and_roundtrips(tmp_path):
    base = make_tiny("vit")
    m = copy.deepcopy(base)
    rep = vitkit.apply_(m, PTQConfig(w_bits=4, a_bits=4, calib_images=8, reconstruct_iters=20), calib=_x())
    rec = rep.steps[0].decisions["reconstruction"]
    assert [r["block"] for r in rec] == [0, 1, 2]
    assert sum(r["loss_after"] for r in rec) < sum(r["loss_before"] for r in rec)
    assert not any(q.scale.requires_grad for q in vitkit.quant.quantizers(m).values() if hasattr(q, "scale"))
    back = vitkit.load(vitkit.save_artifact(m, None, None, tmp_path / "a"))
    with torch.no_grad():
        assert torch.equal(back(_x(4, seed=1)), m(_x(4, seed=1)))
    off = copy.deepcopy(base)
    assert "reconstruction" not in vitkit.apply_(off, PTQConfig(calib_images=8), calib=_x()).steps[0].decisions


@pytest.mark.parametrize("kw", [{"reconstruct_iters": -1}, {"reconstruct_iters": 2.5}, {"reconstruct_lr": 0.0}])
def test_reconstruction_config_checked(kw):
    with pytest.raises(ConfigError, match="reconstruct"):
        PTQConfig(**kw)
