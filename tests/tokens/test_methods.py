"""Token-reduction transforms on tiny random-init timm ViTs of every supported configuration."""

from __future__ import annotations

import logging

import pytest
import torch

import vitkit
from vitkit.errors import ConfigError, UnsupportedModelError
from vitkit.tokens import EViTConfig, HiPruneConfig, PiToMeConfig, RandomDropConfig, ToMeConfig, remove
from vitkit.tokens.patch import TokenReductionBlock, TokenReductionVisionTransformer

from ..conftest import VARIANTS, make_tiny

ZERO = {
    "tome": ToMeConfig(r=0),
    "evit": EViTConfig(keep_rate=1.0),
    "pitome": PiToMeConfig(ratio=1.0),
    "hiprune": HiPruneConfig(keep=1.0),
    "random_drop": RandomDropConfig(r=0),
}
ACTIVE = {
    "tome": ToMeConfig(r=3),
    "evit": EViTConfig(keep_rate=0.5),
    "pitome": PiToMeConfig(ratio=0.8),
    "hiprune": HiPruneConfig(keep=0.5, object_layer=0, register_layer=1),
    "random_drop": RandomDropConfig(r=2),
}


def _x(n=4, hw=32, seed=1):
    return torch.randn(n, 3, hw, hw, generator=torch.Generator().manual_seed(seed))


def _runs(method: str, variant: str) -> bool:
    return not (method == "evit" and variant == "avgpool")


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("method", list(ZERO))
def test_identity_at_zero_strength(method, variant):
    if not _runs(method, variant):
        pytest.skip("EViT refuses models without a class token (tested below)")
    model = make_tiny(variant)
    x = _x()
    with torch.no_grad():
        ref = model(x)
        vitkit.apply_(model, ZERO[method])
        out = model(x)
    assert isinstance(model, TokenReductionVisionTransformer)
    assert (out - ref).abs().max().item() == 0.0


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("method", list(ACTIVE))
def test_active_runs_reduces_and_protects_prefix(method, variant, monkeypatch):
    if not _runs(method, variant):
        pytest.skip("EViT refuses models without a class token")
    from vitkit.ops.token_merging import TokenReduction

    model = make_tiny(variant)
    report = vitkit.apply_(model, ACTIVE[method])
    counts = report.steps[0].decisions["tokens_per_layer"]
    assert counts[-1] < counts[0]
    P = model.num_prefix_tokens
    seen = []
    original_merge = TokenReduction.merge

    def recording_merge(self, x, size=None, weight=None):
        seen.append(self)
        return original_merge(self, x, size, weight)

    monkeypatch.setattr(TokenReduction, "merge", recording_merge)
    with torch.no_grad():
        feats = model.forward_features(_x())
        out = model(_x())
    assert feats.shape[1] == counts[-1]
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    assert seen
    for red in seen:  # cls/dist/registers stay first, in order, never merged or dropped
        assert torch.equal(red.keep[:, :P], torch.arange(P).expand(red.keep.shape[0], P))
        if red.src is not None:
            assert (red.src >= P).all() and (red.dst >= P).all()


def _identical_tokens_model(variant: str):
    """All patch tokens equal (zero pos-embed, constant image) → merging them changes nothing."""
    model = make_tiny(variant)
    with torch.no_grad():
        model.pos_embed.zero_()
    return model, torch.full((2, 3, 32, 32), 0.3)


@pytest.mark.parametrize("variant", ["vit", "registers", "avgpool", "distilled", "layerscale"])
@pytest.mark.parametrize(
    "cfg",
    [ToMeConfig(r=3), PiToMeConfig(ratio=0.7, prop_attn=True), EViTConfig(keep_rate=0.4, prop_attn=True)],
    ids=["tome", "pitome", "evit"],
)
def test_merging_identical_tokens_is_exact_with_sizes(cfg, variant):
    """Size-weighted averages + proportional attention + size-weighted pooling make duplicates free."""
    if isinstance(cfg, EViTConfig) and variant == "avgpool":
        pytest.skip("EViT needs a class token")
    model, x = _identical_tokens_model(variant)
    with torch.no_grad():
        ref = model(x)
        vitkit.apply_(model, cfg)
        out = model(x)
    assert (out - ref).abs().max().item() < 1e-4


def test_caller_attention_mask_still_works():
    model = make_tiny("vit")
    x = _x()
    n = 17
    key_mask = torch.ones(4, 1, 1, n, dtype=torch.bool)
    key_mask[:, :, :, 5:9] = False  # hide four patch tokens
    with torch.no_grad():
        ref_masked = model(x, attn_mask=key_mask)
        ref = model(x)
        vitkit.apply_(model, ToMeConfig(r=0))
        assert torch.equal(model(x, attn_mask=key_mask), ref_masked)
        remove(model)
        vitkit.apply_(model, ToMeConfig(r=3))
        plain = model(x)
        zeros = model(x, attn_mask=torch.zeros(4, 1, n, n))
        masked = model(x, attn_mask=key_mask)
        remove(model)
        vitkit.apply_(model, ToMeConfig(r=[3, 0, 2]))  # a block without a reducer after merging
        gap = model(x, attn_mask=key_mask)
    assert torch.allclose(plain, zeros, atol=1e-5)
    assert torch.isfinite(masked).all() and not torch.allclose(masked, plain)
    assert ref.shape == masked.shape == gap.shape and torch.isfinite(gap).all()


def test_is_causal_is_honoured():
    model = make_tiny("vit")
    x = _x()
    with torch.no_grad():
        ref = model(x, is_causal=True)
        vitkit.apply_(model, PiToMeConfig(ratio=1.0))
        assert torch.equal(model(x, is_causal=True), ref)
        remove(model)
        vitkit.apply_(model, PiToMeConfig(ratio=0.7))
        out = model(x, is_causal=True)
    assert torch.isfinite(out).all()


def test_gradients_flow_in_training_mode():
    model = make_tiny("layerscale", drop_path_rate=0.1)
    vitkit.apply_(model, ToMeConfig(r=3))
    model.train()
    loss = model(_x()).logsumexp(-1).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert model.blocks[2].mlp.fc1.weight.grad.abs().sum() > 0


def test_remove_restores_classes_and_outputs_and_state_dict_keys():
    model = make_tiny("registers")
    classes = [type(m) for m in model.modules()]
    keys = list(model.state_dict())
    x = _x()
    with torch.no_grad():
        ref = model(x)
    vitkit.apply_(model, ToMeConfig(r=3))
    assert isinstance(model.blocks[0], TokenReductionBlock)
    assert type(model).__name__ == "ToMeVisionTransformer" and type(model.blocks[0]).__name__ == "ToMeBlock"
    assert list(model.state_dict()) == keys
    remove(model)
    assert [type(m) for m in model.modules()] == classes
    assert not any("_vitkit" in k for m in model.modules() for k in m.__dict__)
    assert not getattr(model, "vitkit_steps", [])
    with torch.no_grad():
        assert torch.equal(model(x), ref)


@pytest.mark.parametrize("method", list(ACTIVE))
def test_applying_twice_is_refused(method):
    model = make_tiny("vit")
    vitkit.apply_(model, ACTIVE[method])
    with pytest.raises(ConfigError, match="already patched"):
        vitkit.apply_(model, ToMeConfig(r=1))
    assert type(model).__name__.endswith("VisionTransformer")  # still the first patch, intact
    with torch.no_grad():
        model(_x())


def test_r_too_large_is_clipped_with_a_warning(caplog):
    model = make_tiny("vit")
    with caplog.at_level(logging.WARNING):
        report = vitkit.apply_(model, ToMeConfig(r=50))
    assert "maximum 8" in caplog.text
    assert report.steps[0].decisions["r_per_layer"] == [8, 4, 2]


@pytest.mark.parametrize(
    "make",
    [
        lambda: EViTConfig(keep_rate=0.0),
        lambda: EViTConfig(keep_rate=1.5),
        lambda: EViTConfig(keep_rate=[0.5, 1.2, 1.0]),
        lambda: PiToMeConfig(ratio=0),
        lambda: HiPruneConfig(keep=1.01),
        lambda: ToMeConfig(r=-1),
        lambda: ToMeConfig(r=2.5),
        lambda: ToMeConfig(r=[1, 2], inflect=0.5),
        lambda: ToMeConfig(r=2, order="spatial"),
        lambda: HiPruneConfig(score="max"),
    ],
)
def test_bad_configs(make):
    with pytest.raises(ConfigError):
        make()


def test_evit_without_class_token_is_refused_by_name():
    model = make_tiny("avgpool")
    with pytest.raises(UnsupportedModelError, match="no class token"):
        vitkit.apply_(model, EViTConfig(keep_rate=0.5))
    assert not hasattr(model, "_vitkit_token_method")


def test_unsupported_host_model_is_named():
    with pytest.raises(UnsupportedModelError, match="not a model family vitkit has an adapter for"):
        vitkit.apply_(torch.nn.Sequential(torch.nn.Linear(2, 2)), ToMeConfig(r=1))


def test_schedules_and_targets():
    model = make_tiny("vit", depth=4)
    d = vitkit.apply_(model, ToMeConfig(r=[2, 0, 1, 3]), dry_run=True).steps[0].decisions
    assert d["r_per_layer"] == [2, 0, 1, 3] and d["tokens_per_layer"] == [17, 15, 15, 14, 11]
    d = vitkit.apply_(model, ToMeConfig(r=2, inflect=-1), dry_run=True).steps[0].decisions
    assert d["r_per_layer"] == [4, 2, 1, 0]  # decreasing: 2r → 0
    d = vitkit.apply_(model, ToMeConfig(r={"start": 1, "end": 4}), dry_run=True).steps[0].decisions
    assert d["r_per_layer"] == [1, 2, 3, 4]
    d = vitkit.apply_(model, ToMeConfig(r=2, targets=("blocks.1", "blocks.3")), dry_run=True).steps[0].decisions
    assert d["r_per_layer"] == [0, 2, 0, 2]
    with pytest.raises(ConfigError, match="matches no blocks"):
        vitkit.apply_(model, ToMeConfig(r=2, skip=("block.9",)))
    d = vitkit.apply_(model, EViTConfig(keep_rate=0.5, locations=(1,)), dry_run=True).steps[0].decisions
    assert d["tokens_per_layer"] == [17, 17, 10, 10, 10]  # cls + ceil(0.5*16) + fused
    assert not hasattr(model, "_vitkit_token_method")  # dry runs leave the model alone


@pytest.mark.parametrize("method", list(ACTIVE))
def test_save_load_round_trip(method, tmp_path):
    model = make_tiny("vit")
    vitkit.apply_(model, ACTIVE[method])
    x = _x()
    if method == "random_drop":  # fresh generator on load: compare the first forward of both
        remove(model)
        vitkit.apply_(model, ACTIVE[method])
    with torch.no_grad():
        ref = model(x)
    vitkit.save_artifact(model, None, None, tmp_path / "art")
    loaded = vitkit.load(tmp_path / "art")
    assert type(loaded).__name__ == type(model).__name__
    with torch.no_grad():
        assert torch.equal(loaded(x), ref)


def test_other_input_size():
    model = make_tiny("vit", dynamic_img_size=True)
    vitkit.apply_(model, ToMeConfig(r=4))
    with torch.no_grad():
        out = model(_x(hw=48))  # 36 patches instead of 16
    assert out.shape == (4, 10)
    hp = make_tiny("vit", dynamic_img_size=True)
    vitkit.apply_(hp, HiPruneConfig(keep=0.5))
    with torch.no_grad():
        assert hp.forward_features(_x(hw=48)).shape[1] == 1 + 18
