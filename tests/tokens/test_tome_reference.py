"""ToMe's default reproduces the reference implementation's outputs (independent oracle in tome_oracle.py)."""

from __future__ import annotations

import logging

import pytest
import timm
import torch

import vitkit
from vitkit.errors import ConfigError
from vitkit.tokens import ToMeConfig

from ..conftest import make_tiny
from .tome_oracle import reference_schedule, reference_tome_forward

TOL = 1e-4  # max |Δlogit| allowed against the reference forward

#: r as the reference takes it → the equivalent ToMeConfig
SCHEDULES = {
    "r1": (1, ToMeConfig(r=1)),
    "r4": (4, ToMeConfig(r=4)),
    "per-layer": ([8, 0, 4, 2], ToMeConfig(r=[8, 0, 4, 2])),  # a 0 layer after merging: prop-attn still applies
    "decreasing": ((4, -1.0), ToMeConfig(r=4, inflect=-1.0)),
    "clipped": (40, ToMeConfig(r=40)),  # capped at half the unprotected tokens in every layer
}


def _images(hw: int, n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, hw, hw, generator=torch.Generator().manual_seed(seed))


def _timm_vit_tiny(hw: int, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=hw, depth=4, num_classes=10, **kw).eval()


def _max_diff(model: torch.nn.Module, cfg: ToMeConfig, r_ref, x: torch.Tensor) -> float:
    expected = reference_tome_forward(model, x, r_ref)
    with torch.no_grad():
        vitkit.apply_(model, cfg)
        out = model(x)
    return (out - expected).abs().max().item()


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("variant", ["vit", "distilled"])
def test_default_matches_reference_on_tiny_models(variant, schedule, caplog):
    r_ref, cfg = SCHEDULES[schedule]
    model = make_tiny(variant, img_size=64, depth=4)  # 64 patches: 65 tokens (cls) / 66 (cls + dist)
    with caplog.at_level(logging.WARNING):
        assert _max_diff(model, cfg, r_ref, _images(64)) < TOL


@pytest.mark.parametrize("schedule", ["r1", "r4", "per-layer"])
@pytest.mark.parametrize("hw", [64, 112])
def test_default_matches_reference_on_vit_tiny(hw, schedule):
    """timm's own ViT-Ti (192 wide, 3 heads) at 16 / 49 patches: both token-count parities."""
    r_ref, cfg = SCHEDULES[schedule]
    model = _timm_vit_tiny(hw)
    assert _max_diff(model, cfg, r_ref, _images(hw, n=3)) < TOL


def test_default_matches_reference_on_distilled_deit_odd_patch_count():
    model = make_tiny("distilled", img_size=56, depth=4)  # 49 patches + cls + dist = 51 tokens
    assert _max_diff(model, ToMeConfig(r=5), 5, _images(56)) < TOL


def test_default_matches_reference_without_prop_attn():
    model = make_tiny("vit", img_size=64, depth=4)
    x = _images(64)
    expected = reference_tome_forward(model, x, 6, prop_attn=False)
    with torch.no_grad():
        vitkit.apply_(model, ToMeConfig(r=6, prop_attn=False))
        assert (model(x) - expected).abs().max().item() < TOL


def test_similarity_order_is_not_the_reference():
    """The kept non-reference option really differs (so the oracle tests above can tell orders apart)."""
    model = make_tiny("vit", img_size=64, depth=4)
    assert _max_diff(model, ToMeConfig(r=4, order="similarity"), 4, _images(64)) > 10 * TOL


def test_schedule_matches_reference_parse_r():
    from vitkit.tokens.tome import tome_schedule

    for r, inflect in [(8, None), (8, -1.0), (13, 0.5), (5, 1.0), (3, -0.3)]:
        ref = reference_schedule(r if inflect is None else (r, inflect), 12)
        assert tome_schedule(r, inflect, 12) == ref


def test_order_is_validated():
    with pytest.raises(ConfigError, match="order must be one of.*reference"):
        ToMeConfig(r=2, order="spatial")


def test_version_1_configs_keep_the_order_they_were_made_with():
    assert ToMeConfig.from_dict({"r": 4}, version=1).order == "similarity"
    assert ToMeConfig.from_dict({"r": 4, "version": 1}).order == "similarity"
    assert ToMeConfig.from_dict({"r": 4, "order": "reference"}, version=1).order == "reference"
    assert ToMeConfig.from_dict({"r": 4}, version=2).order == "reference"
    assert ToMeConfig.from_dict({"r": 4}).order == "reference"
    with pytest.raises(ConfigError, match="newer"):
        ToMeConfig.from_dict({"r": 4}, version=3)
    cfg = ToMeConfig(r=4, order="similarity")
    assert ToMeConfig.from_dict(cfg.to_dict(), version=ToMeConfig.version) == cfg
