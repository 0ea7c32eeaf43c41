"""Structured pruning through the adapter: properties on every tiny timm variant."""

import copy

import pytest
import torch
import torch.nn as nn

import vitkit
from vitkit.adapters.timm_vit_surgery import keep_blocks, prune_heads, prune_mlp
from vitkit.errors import CheckpointError, ConfigError, DataError, UnsupportedModelError
from vitkit.prune import PruneConfig, structure
from vitkit.prune.saliency import calibration_batches, gradient_scores

from ..conftest import VARIANTS, make_tiny

IMPORTANCES = ("l1", "l2", "taylor", "hessian", "dimap")


def test_zero_ratio_is_identity(tiny_variant, images):
    _, model = tiny_variant
    ref = model(images)
    rep = vitkit.apply_(model, PruneConfig(ratio=0.0, importance="l1"))
    assert torch.equal(model(images), ref)
    assert rep.steps[0].decisions["kept_heads"] == {} and rep.steps[0].decisions["kept_mlp"] == {}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pruning_a_head_equals_zeroing_it(variant, images):
    model = make_tiny(variant)
    zeroed = copy.deepcopy(model)
    attn = zeroed.blocks[1].attn
    d = attn.head_dim
    with torch.no_grad():
        attn.proj.weight[:, 1 * d : 2 * d] = 0  # head 1 contributes nothing
    prune_heads(model.blocks[1], [0, 2], index=1)
    assert model.blocks[1].attn.num_heads == 2 and model.blocks[1].attn.attn_dim == 2 * d
    assert model.blocks[1].attn.scale == pytest.approx(d**-0.5)
    torch.testing.assert_close(model(images), zeroed(images), atol=1e-5, rtol=1e-5)


def test_pruning_neurons_equals_zeroing_them(tiny_model, images):
    zeroed = copy.deepcopy(tiny_model)
    with torch.no_grad():
        zeroed.blocks[0].mlp.fc2.weight[:, :10] = 0
    prune_mlp(tiny_model.blocks[0], range(10, tiny_model.blocks[0].mlp.fc1.out_features), index=0)
    torch.testing.assert_close(tiny_model(images), zeroed(images), atol=1e-5, rtol=1e-5)


def test_fused_and_manual_attention_agree_after_pruning(tiny_model, images):
    prune_heads(tiny_model.blocks[0], [2], index=0)
    fused = tiny_model(images)
    for b in tiny_model.blocks:
        b.attn.fused_attn = False
    torch.testing.assert_close(tiny_model(images), fused, atol=1e-5, rtol=1e-5)


def test_keep_blocks_equals_skipping(tiny_model, images):
    ref = copy.deepcopy(tiny_model)
    ref.blocks[1] = nn.Identity()
    keep_blocks(tiny_model, [0, 2])
    torch.testing.assert_close(tiny_model(images), ref(images))


@pytest.mark.parametrize("importance", IMPORTANCES)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_save_load_round_trip(variant, importance, images, tmp_path):
    model = make_tiny(variant)
    groups = ("heads", "mlp", "blocks") if importance == "l1" else ("heads", "mlp")
    rep = vitkit.apply_(model, PruneConfig(ratio=0.4, importance=importance, groups=groups), calib=images)
    dec = rep.steps[0].decisions
    assert dec["macs"]["after"] <= 0.62 * dec["macs"]["before"]
    out = model(images)
    vitkit.save_artifact(model, None, rep, tmp_path / "art")
    text = (tmp_path / "art" / "recipe.resolved.yaml").read_text()
    assert "kept_heads" in text and "mlp_hidden" in text
    loaded = vitkit.load(tmp_path / "art")
    assert structure(loaded) == structure(model)
    torch.testing.assert_close(loaded(images), out)


def test_params_target_and_uniform_allocation(tiny_model):
    rep = vitkit.apply_(tiny_model, PruneConfig(target="params", ratio=0.3, importance="l2", allocation="uniform"))
    dec = rep.steps[0].decisions
    assert dec["params"]["after"] <= 0.71 * dec["params"]["before"]
    sizes = {(s["num_heads"], s["mlp_hidden"]) for s in structure(tiny_model).values()}
    assert len(sizes) == 1  # the same fraction in every block


def test_dry_run_shows_plan_without_changing_model(tiny_model, images):
    before = copy.deepcopy(tiny_model.state_dict())
    rep = vitkit.apply_(tiny_model, PruneConfig(ratio=0.5, importance="hessian"), dry_run=True)
    dec = rep.steps[0].decisions
    assert dec["pruned_heads"] or dec["pruned_mlp_count"]
    assert dec["importance_used"].startswith("l1")  # no calibration data in a dry run
    after = tiny_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_targets_restrict_blocks(tiny_model):
    rep = vitkit.apply_(tiny_model, PruneConfig(ratio=0.2, importance="l1", targets=("blocks.1",)))
    dec = rep.steps[0].decisions
    assert set(dec["kept_heads"]) | set(dec["kept_mlp"]) <= {"blocks.1"}


def test_hessian_accumulates_every_batch(tiny_model, images):
    a, b = images[:2], images[2:]
    sa = gradient_scores(tiny_model, "hessian", [(a, None)])
    sb = gradient_scores(tiny_model, "hessian", [(b, None)])
    sab = gradient_scores(tiny_model, "hessian", calibration_batches(images, tiny_model, 4, 2, 0))
    for x, y, z in zip(sa, sb, sab, strict=True):
        torch.testing.assert_close(z.heads, x.heads + y.heads)
        torch.testing.assert_close(z.mlp, x.mlp + y.mlp)


def test_taylor_sums_gradients_over_batches(tiny_model, images):
    s1 = gradient_scores(tiny_model, "taylor", [(images, None)])
    s2 = gradient_scores(tiny_model, "taylor", [(images, None), (images, None)])
    torch.testing.assert_close(s2[0].mlp, 2 * s1[0].mlp)  # same batch twice doubles G
    assert all(p.grad is None for p in tiny_model.parameters())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ratio": 1.0},
        {"ratio": -0.1},
        {"importance": "oracle"},
        {"groups": ("heads", "embed")},
        {"target": "flops"},
        {"latency_batch": 0},
        {"allocation": "uniform", "groups": ("blocks",)},
        {"round_to": 0},
    ],
)
def test_bad_config(kwargs):
    with pytest.raises(ConfigError):
        PruneConfig(**kwargs)


def test_refuses_pruning_every_head_uniformly(tiny_model):
    with pytest.raises(ConfigError, match="every head of blocks"):
        vitkit.apply_(tiny_model, PruneConfig(ratio=0.9, importance="l1", allocation="uniform", groups=("heads",)))


def test_unreachable_target_is_an_error(tiny_model):
    with pytest.raises(ConfigError, match="lower the ratio"):
        vitkit.apply_(tiny_model, PruneConfig(ratio=0.9, importance="l1", groups=("heads",)))


def test_data_driven_needs_calibration(tiny_model):
    with pytest.raises(DataError, match="calibration"):
        vitkit.apply_(tiny_model, PruneConfig(importance="taylor"))


def test_refuses_non_vit_and_unsupported_features():
    with pytest.raises(UnsupportedModelError):
        vitkit.apply_(nn.Sequential(nn.Linear(2, 2)), PruneConfig(importance="l1"))
    with pytest.raises(UnsupportedModelError, match="scale_norm"):
        vitkit.apply_(make_tiny("vit", scale_attn_norm=True), PruneConfig(importance="l1", groups=("heads",)))


def test_restore_names_mismatching_block(tiny_model, tmp_path):
    rep = vitkit.apply_(tiny_model, PruneConfig(ratio=0.3, importance="l1"))
    vitkit.save_artifact(tiny_model, None, rep, tmp_path / "art")
    import yaml

    path = tmp_path / "art" / "recipe.resolved.yaml"
    data = yaml.safe_load(path.read_text())
    data["steps"][0]["decisions"]["before"]["blocks.2"]["num_heads"] = 5
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CheckpointError, match="blocks.2"):
        vitkit.load(tmp_path / "art")


def test_failed_prune_leaves_model_untouched(tiny_model, images):
    ref = tiny_model(images)
    with pytest.raises(ConfigError):
        vitkit.apply_(tiny_model, PruneConfig(ratio=0.95, importance="l1", groups=("mlp",)))
    assert torch.equal(tiny_model(images), ref)


def test_recipe_prune_then_distill_parses_and_dry_runs():
    from vitkit.recipe import parse_recipe, run_recipe

    recipe = parse_recipe(
        {
            "model": "vit_tiny_patch16_224",
            "model_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 3, "num_heads": 3},
            "steps": [
                {"prune": {"target": "macs", "ratio": 0.5, "importance": "hessian", "groups": ["heads", "mlp"]}},
                {"distill": {"train": {"epochs": 2}, "teacher": "original"}},
            ],
        }
    )
    _, report = run_recipe(recipe, None, dry_run=True)
    assert [s.name for s in report.steps] == ["prune", "distill"]
    assert report.steps[0].decisions["pruned_heads"] or report.steps[0].decisions["pruned_mlp_count"]


def test_latency_target_uses_measured_costs(tmp_path):
    # wide enough that heads and neurons carry most of the measured time: on the 48-wide tiny model fixed
    # per-block costs dominate and the removable share itself varies with load (8-30 % seen)
    tiny_model = make_tiny("vit", img_size=64, embed_dim=192, num_heads=6)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    rep = vitkit.apply_(tiny_model, PruneConfig(target="latency", ratio=0.2, importance="l1", latency_repeats=3))
    dec = rep.steps[0].decisions
    lat = dec["latency"]
    assert set(lat["unit_costs_s"]) == {f"blocks.{i}" for i in range(3)}
    assert all(c["head"] > 0 and c["neuron"] > 0 and c["fixed"] >= 0 for c in lat["unit_costs_s"].values())
    assert lat["after_s"] > 0
    assert lat["estimated_after_s"] <= 0.8 * lat["before_s"] * 1.001  # the plan removed the budget it priced
    assert dec["pruned_heads"] or dec["pruned_mlp_count"]
    vitkit.save_artifact(tiny_model, None, rep, tmp_path / "art")
    torch.testing.assert_close(vitkit.load(tmp_path / "art")(images), tiny_model(images))


def test_global_never_empties_a_block_unless_blocks_are_a_group(tiny_model):
    m = copy.deepcopy(tiny_model)
    vitkit.apply_(m, PruneConfig(ratio=0.5, importance="l1", groups=("heads", "mlp")))
    assert all(b["num_heads"] >= 1 for b in structure(m).values()) and len(m.blocks) == 3
    m = copy.deepcopy(tiny_model)
    rep = vitkit.apply_(m, PruneConfig(ratio=0.6, importance="l1", groups=("heads", "mlp", "blocks")))
    removed = rep.steps[0].decisions["pruned_blocks"]
    assert len(m.blocks) == 3 - len(removed) and all(b["num_heads"] >= 1 for b in structure(m).values())


@pytest.mark.parametrize("variant", ["vit", "layerscale", "registers", "distilled"])
def test_pruning_head_dims_equals_zeroing_them(variant, images):
    from vitkit.adapters.timm_vit_surgery import prune_head_dims

    model = make_tiny(variant)
    zeroed = copy.deepcopy(model)
    attn = zeroed.blocks[0].attn
    h, d = attn.num_heads, attn.head_dim
    drop = [1, 5, 7]
    with torch.no_grad():
        for t in range(3):
            for head in range(h):
                for j in drop:
                    attn.qkv.weight[t * h * d + head * d + j] = 0
                    attn.qkv.bias[t * h * d + head * d + j] = 0
    prune_head_dims(model.blocks[0], [j for j in range(d) if j not in drop], index=0)
    a = model.blocks[0].attn
    assert a.head_dim == d - 3 and a.attn_dim == h * (d - 3) and a.scale == pytest.approx((d - 3) ** -0.5)
    torch.testing.assert_close(model(images), zeroed(images), atol=1e-5, rtol=1e-5)
    for b in model.blocks:
        b.attn.fused_attn = False
    torch.testing.assert_close(model(images), zeroed(images), atol=1e-5, rtol=1e-5)


def test_head_dim_pruning_with_qk_norm_keeps_fused_and_manual_equal(images):
    from vitkit.adapters.timm_vit_surgery import prune_head_dims

    model = make_tiny("qknorm")
    prune_head_dims(model.blocks[1], range(0, 16, 2), index=1)
    assert model.blocks[1].attn.q_norm.weight.shape == (8,)
    fused = model(images)
    model.blocks[1].attn.fused_attn = False
    torch.testing.assert_close(model(images), fused, atol=1e-5, rtol=1e-5)
    with pytest.raises(UnsupportedModelError, match="every dim"):
        prune_head_dims(model.blocks[1], [], index=1)
