"""PTQ transform: RepQ-ViT reparameterization exactness, save→load, method behaviour, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import vitkit
from vitkit.errors import ConfigError, DataError, UnsupportedModelError
from vitkit.ops import quant as Q
from vitkit.quant import PTQConfig, quantizers, set_quant_enabled
from vitkit.quant.modules import QuantLinear
from vitkit.quant.reparam import fold_into_norm_linear, reparam_factors

from ..conftest import VARIANTS, make_tiny


def _calib(n=4, seed=3):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _out(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_repq_reparameterization_is_exact_in_float(variant):
    ref = make_tiny(variant)
    model = make_tiny(variant)
    x = _calib()
    vitkit.apply_(model, PTQConfig(w_bits=4, a_bits=4, method="repq", calib_images=4), calib=x)
    steps = model.vitkit_steps[-1].decisions
    assert len(steps["reparameterized"]) == 2 * len(model.blocks)
    # the LN affine and the next linears changed ...
    assert not torch.allclose(model.blocks[0].norm1.weight, ref.blocks[0].norm1.weight)
    set_quant_enabled(model, False)
    # ... but the float network is the same function
    torch.testing.assert_close(_out(model, x), _out(ref, x), atol=1e-5, rtol=1e-5)
    set_quant_enabled(model, True)
    assert not torch.allclose(_out(model, x), _out(ref, x), atol=1e-3)


def test_per_channel_quant_equals_per_tensor_after_fold():
    """RepQ-ViT eq. 6–9: per-channel quantization of y ≡ per-tensor quantization of the reparameterized y′."""
    torch.manual_seed(0)
    c, bits = 24, 4
    norm, lin = nn.LayerNorm(c), nn.Linear(c, 16)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(c) * 3 + 0.1)
        norm.weight[[2, 7]] *= 30  # outlier channels, as in trained ViTs
        norm.bias.copy_(torch.randn(c))
    x = torch.randn(64, c)
    y = norm(x).detach()
    s, z = Q.search_uniform(y, bits, axis=-1, method="quantile")
    ref = lin(Q.fake_quant(y, s, z, bits, symmetric=False, axis=-1))
    r, b, s_t, z_t = reparam_factors(s, z)
    fold_into_norm_linear(norm, lin, r, b)
    y2 = norm(x).detach()
    out = lin(Q.fake_quant(y2, s_t, z_t, bits, symmetric=False))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_fold_adds_bias_when_missing():
    norm, lin = nn.LayerNorm(8), nn.Linear(8, 4, bias=False)
    x = torch.randn(5, 8)
    ref = lin(norm(x)).detach()
    r, b = torch.rand(8) + 0.5, torch.randn(8)
    assert fold_into_norm_linear(norm, lin, r, b)
    torch.testing.assert_close(lin(norm(x)), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["repq", "ptq4vit", "minmax"])
def test_save_load_round_trip(method, tmp_path):
    model = make_tiny("vit")
    x = _calib()
    vitkit.apply_(model, PTQConfig(w_bits=6, a_bits=6, method=method, calib_images=4), calib=x)
    before = _out(model, x)
    vitkit.save_artifact(model, None, None, tmp_path / "art")
    loaded = vitkit.load(tmp_path / "art")
    assert len(quantizers(loaded)) == len(quantizers(model))
    torch.testing.assert_close(_out(loaded, x), before, atol=1e-5, rtol=1e-5)


def test_post_gelu_twin_under_repq(tmp_path):
    """post_gelu="twin": RepQ-ViT with PTQ4ViT's twin-uniform fc2-input quantizer, everything else unchanged."""
    x = _calib()
    plain, twin = make_tiny("vit"), make_tiny("vit")
    vitkit.apply_(plain, PTQConfig(method="repq", calib_images=4), calib=x)
    vitkit.apply_(twin, PTQConfig(method="repq", post_gelu="twin", calib_images=4), calib=x)
    kinds = {n: q.kind for n, q in quantizers(twin).items()}
    assert {k for n, k in kinds.items() if n.endswith("fc2.a_quant")} == {"twin"}
    assert {n: q.kind for n, q in quantizers(plain).items() if not n.endswith("fc2.a_quant")} == {
        n: k for n, k in kinds.items() if not n.endswith("fc2.a_quant")
    }
    assert twin.vitkit_steps[-1].decisions["reparameterized"] == plain.vitkit_steps[-1].decisions["reparameterized"]
    vitkit.save_artifact(twin, None, None, tmp_path / "art")
    torch.testing.assert_close(_out(vitkit.load(tmp_path / "art"), x), _out(twin, x), atol=1e-5, rtol=1e-5)


def test_round_trip_with_added_bias(tmp_path):
    model = make_tiny("vit", qkv_bias=False)
    x = _calib()
    vitkit.apply_(model, PTQConfig(method="repq", calib_images=4), calib=x)
    assert model.vitkit_steps[-1].decisions["added_bias"]
    vitkit.save_artifact(model, None, None, tmp_path / "art")
    torch.testing.assert_close(_out(vitkit.load(tmp_path / "art"), x), _out(model, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["repq", "dopq", "ptq4vit", "minmax", "percentile"])
def test_w8a8_stays_close_to_float(method):
    ref, model = make_tiny("vit"), make_tiny("vit")
    x = _calib(16)
    vitkit.apply_(model, PTQConfig(method=method, calib_images=16, softmax="uniform"), calib=x)
    cos = torch.nn.functional.cosine_similarity(_out(model, x), _out(ref, x), dim=-1)
    assert cos.min() > 0.99


def test_quantizers_everywhere_and_names_kept():
    model = make_tiny("vit")
    keys = set(model.state_dict())
    vitkit.apply_(model, PTQConfig(calib_images=4), calib=_calib())
    new_keys = set(model.state_dict())
    assert keys <= new_keys  # original weight names unchanged
    assert all(".a_quant." in k or ".w_quant." in k or "_quant." in k for k in new_keys - keys)
    assert isinstance(model.blocks[0].attn.qkv, QuantLinear) and isinstance(model.head, QuantLinear)
    assert type(model.blocks[0].attn).__name__ == "QuantAttention"
    assert model.blocks[0].attn.attn_quant.kind == "log"


def test_layer_bits_and_skip():
    model = make_tiny("vit")
    cfg = PTQConfig(w_bits=8, calib_images=4, layer_bits={"blocks.0.mlp.fc1": 4}, skip=("head",))
    vitkit.apply_(model, cfg, calib=_calib())
    assert model.blocks[0].mlp.fc1.w_quant.bits == 4 and model.blocks[0].mlp.fc2.w_quant.bits == 8
    assert type(model.head) is nn.Linear


def test_patchify_projection_follows_w_bits_and_version_1_configs_keep_their_first_layer():
    model = make_tiny("vit")
    vitkit.apply_(model, PTQConfig(w_bits=4, a_bits=8, calib_images=4), calib=_calib())
    assert model.patch_embed.proj.w_quant.bits == 4  # RepQ-ViT quantizes the patch projection with the rest
    assert PTQConfig.from_dict({"w_bits": 4}, version=1).first_weight_bits == 4
    assert PTQConfig.from_dict({"w_bits": 4}, version=2).first_weight_bits is None


def test_dry_run_changes_nothing():
    model = make_tiny("vit")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rep = vitkit.apply_(model, PTQConfig(), dry_run=True)
    assert "plan" in rep.steps[0].decisions
    assert not quantizers(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_calibration_from_dataset():
    model = make_tiny("vit", img_size=28, patch_size=7, in_chans=1)
    spec = vitkit.data.input_spec(model, mean=(0.5,), std=(0.5,))
    ds = vitkit.data.load_dataset("digits", "train", spec=spec)
    vitkit.apply_(model, PTQConfig(calib_images=4), calib=ds)
    assert model.vitkit_steps[-1].decisions["calib_images"] == 4


def test_config_round_trip():
    cfg = PTQConfig(w_bits=4, a_bits=6, method="dopq", layer_bits={"head": 8})
    assert PTQConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"w_bits": 1}, "w_bits"),
        ({"a_bits": 9}, "a_bits"),
        ({"w_bits": 4.5}, "w_bits"),
        ({"method": "gptq"}, "method"),
        ({"calib_images": 0}, "calib_images"),
        ({"softmax": "tanq"}, "softmax"),
        ({"post_gelu": "log2"}, "post_gelu"),
        ({"layer_bits": {"head": 16}}, "layer_bits"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PTQConfig(**kwargs)


def test_bad_calibration_input():
    model = make_tiny("vit")
    with pytest.raises(DataError, match="calib="):
        vitkit.apply_(model, PTQConfig())
    with pytest.raises(DataError, match="calib_images=32"):
        vitkit.apply_(model, PTQConfig(), calib=_calib(4))
    with pytest.raises(DataError, match="expects"):
        vitkit.apply_(model, PTQConfig(calib_images=4), calib=torch.randn(4, 3, 16, 16))
    bad = _calib(4)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        vitkit.apply_(model, PTQConfig(calib_images=4), calib=bad)
    with pytest.raises(DataError, match="empty"):
        vitkit.apply_(model, PTQConfig(calib_images=4), calib=[])
    assert not quantizers(model)  # apply_ restored the model after each failure


def test_nan_activation_names_the_module():
    model = make_tiny("vit")
    with torch.no_grad():
        model.blocks[1].mlp.fc1.weight[0, 0] = float("inf")
    with pytest.raises(DataError, match=r"blocks\.1\.mlp\.fc1\.w_quant"):
        vitkit.apply_(model, PTQConfig(calib_images=4, method="minmax"), calib=_calib(4))


def test_unsupported_layer_is_named():
    model = make_tiny("vit")
    model.blocks[1].mlp.fc2 = nn.Sequential(model.blocks[1].mlp.fc2)  # e.g. an unmerged adapter wrapper
    with pytest.raises(UnsupportedModelError, match=r"blocks\.1\.mlp\.fc2 \(Sequential\)"):
        vitkit.apply_(model, PTQConfig(calib_images=4), calib=_calib(4))
    assert not quantizers(model)


def test_unsupported_and_twice():
    with pytest.raises(UnsupportedModelError):
        vitkit.apply_(nn.Sequential(nn.Linear(3, 3)), PTQConfig(calib_images=1), calib=torch.randn(1, 3))
    model = make_tiny("vit")
    vitkit.apply_(model, PTQConfig(calib_images=4), calib=_calib(4))
    with pytest.raises(ConfigError, match="already quantized"):
        vitkit.apply_(model, PTQConfig(calib_images=4), calib=_calib(4))


def test_recipe_step_parses_and_dry_runs():
    from vitkit.recipe import parse_recipe, parse_steps, run_recipe

    (cfg,) = parse_steps([{"ptq": {"w_bits": 8, "a_bits": 8, "method": "repq"}}])
    assert cfg == PTQConfig()
    recipe = parse_recipe({"model": "vitkit_mnist_tiny", "steps": [{"ptq": {"w_bits": 4, "a_bits": 4}}]})
    _, report = run_recipe(recipe, None, dry_run=True)
    assert report.steps[0].name == "ptq"
    assert [s.name for s in vitkit.list_transforms("*ptq")] == ["mixed_ptq", "ptq"]
