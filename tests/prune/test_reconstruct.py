"""Least-squares reconstruction after structured pruning (``PruneConfig(reconstruct=True)``)."""

from __future__ import annotations

import copy

import pytest
import torch

import vitkit
from vitkit.errors import ConfigError, DataError
from vitkit.ops.pruning import ridge_refit
from vitkit.prune import PruneConfig

from ..conftest import make_tiny


def test_ridge_refit_recovers_an_exact_linear_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 12, generator=g)
    w, b = torch.randn(5, 12, generator=g), torch.randn(5, generator=g)
    w2, b2 = ridge_refit(x, x @ w.T + b, damp=1e-9)
    torch.testing.assert_close(w2, w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b2, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="share N"):
        ridge_refit(x, torch.randn(3, 5))


def test_refit_is_the_best_fit_of_the_pruned_inputs():
    """Among all maps of the kept inputs, the refit has the lowest error (≤ simply dropping the columns)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 10, generator=g)
    x[:, 7] = 0.8 * x[:, 2] + 0.1 * torch.randn(400, generator=g)  # a pruned input the kept ones explain
    w = torch.randn(4, 10, generator=g)
    y = x @ w.T
    keep = [0, 1, 2, 3, 4, 5]
    w2, b2 = ridge_refit(x[:, keep], y, damp=1e-6)
    refit = (x[:, keep] @ w2.T + b2 - y).norm()
    dropped = (x[:, keep] @ w[:, keep].T - y).norm()
    assert refit < 0.8 * dropped


def _images(n=16, seed=4):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_reconstruction_brings_the_pruned_model_closer_to_the_dense_one(tmp_path):
    x = _images()
    dense = make_tiny("vit")
    plain, refit = copy.deepcopy(dense), copy.deepcopy(dense)
    cfg = dict(ratio=0.4, importance="l1", calib_images=16)
    vitkit.apply_(plain, PruneConfig(**cfg), calib=x)
    d = vitkit.apply_(refit, PruneConfig(**cfg, reconstruct=True), calib=x).steps[0].decisions
    assert d["structure"] == plain.vitkit_steps[-1].decisions["structure"]  # same shapes, other weights
    layers = {f"blocks.{i}.{n}" for i in range(len(refit.blocks)) for n in ("attn.proj", "mlp.fc2")}
    assert d["reconstruction_error"] and set(d["reconstruction_error"]) <= layers
    with torch.no_grad():
        y = dense(x)
        assert (refit(x) - y).norm() < (plain(x) - y).norm()
        y_test = dense(_images(8, seed=9))  # held-out images too
        assert (refit(_images(8, seed=9)) - y_test).norm() < (plain(_images(8, seed=9)) - y_test).norm()
    vitkit.save_artifact(refit, None, None, tmp_path / "art")
    with torch.no_grad():
        torch.testing.assert_close(vitkit.load(tmp_path / "art")(x), refit(x), atol=1e-5, rtol=1e-5)


def test_zero_ratio_with_reconstruction_changes_nothing():
    x = _images()
    m, ref = make_tiny("vit"), make_tiny("vit")
    vitkit.apply_(m, PruneConfig(ratio=0.0, importance="l1", reconstruct=True, calib_images=16), calib=x)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x))


def test_reconstruction_needs_images_and_a_bool():
    with pytest.raises(DataError, match="calibration images"):
        vitkit.apply_(make_tiny("vit"), PruneConfig(ratio=0.3, importance="l1", reconstruct=True))
    with pytest.raises(ConfigError, match="reconstruct"):
        PruneConfig(reconstruct="yes")
