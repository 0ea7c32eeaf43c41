"""AdaptFormer adapters and visual prompts: identity/effect, trainable set, prefix-token accounting with token
reduction, artifacts, not foldable."""

import pytest
import torch

import vitkit
from vitkit import ConfigError
from vitkit.adapt import AdapterConfig, AdaptFormerMlp, PromptConfig, adapter_kind
from vitkit.adapters import describe
from vitkit.api import merge_back
from vitkit.tokens import ToMeConfig

from ..conftest import make_tiny


def _perturb_adapters(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, AdaptFormerMlp):
                m.adapter_up.weight.normal_(0, 0.5)


def test_adapter_starts_as_identity_then_changes_the_mlp_branch(tiny_variant, images):
    _, model = tiny_variant
    before = model(images)
    vitkit.apply_(model, AdapterConfig(bottleneck=8, scale=0.1))
    torch.testing.assert_close(model(images), before, rtol=0, atol=0)
    assert adapter_kind(model) == "adapter"
    _perturb_adapters(model)
    assert not torch.allclose(model(images), before, atol=1e-4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".mlp.adapter_" in n or n.startswith("head") for n in trainable)


def test_adapter_targets_blocks_and_bad_input(tiny_model):
    with pytest.raises(ConfigError, match="bottleneck=64 is wider than the model"):
        vitkit.apply_(tiny_model, AdapterConfig(bottleneck=64))  # tiny model: embed_dim 48
    with pytest.raises(ConfigError, match="bottleneck must be a positive int"):
        AdapterConfig(bottleneck=0)
    with pytest.raises(ConfigError, match="'blocks.7' matches no blocks"):
        vitkit.apply_(tiny_model, AdapterConfig(bottleneck=4, targets=["blocks.7"]))
    report = vitkit.apply_(tiny_model, AdapterConfig(bottleneck=4, targets=["blocks.[12]"]))
    assert report.steps[0].decisions["blocks"] == ["blocks.1", "blocks.2"]
    assert not isinstance(tiny_model.blocks[0].mlp, AdaptFormerMlp)
    with pytest.raises(ConfigError, match="cannot be folded into the weights"):
        merge_back(tiny_model)


@pytest.mark.parametrize("deep", [False, True])
def test_prompts_are_prefix_tokens(images, deep):
    model = make_tiny("registers")  # cls + 4 registers
    plain = describe(model)
    base = model(images)
    vitkit.apply_(model, PromptConfig(num_tokens=3, deep=deep))
    info = describe(model)
    assert info.num_prefix_tokens == plain.num_prefix_tokens + 3 and info.num_prompt_tokens == 3
    assert "prompts" in info.features and info.num_tokens == plain.num_tokens + 3
    seen = []
    model.blocks[1].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    out = model(images)
    assert out.shape == base.shape and seen == [plain.num_tokens + 3]
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    expected = ["vpt_prompt"] + ([f"blocks.{i}.vpt_prompt" for i in (1, 2)] if deep else [])
    assert trainable == sorted(expected + ["head.bias", "head.weight"])
    with torch.no_grad():  # the last prompt set matters (deep: block 2's own prompts replace the slots)
        (model.blocks[2].vpt_prompt if deep else model.vpt_prompt).normal_()  # not a constant: LN removes it
    assert not torch.allclose(model(images), out, atol=1e-5)


def test_avg_pool_model_pools_patches_only(images):
    model = make_tiny("avgpool")
    vitkit.apply_(model, PromptConfig(num_tokens=2))
    feats = model.forward_features(images)  # [B, 2 + 16, C]
    assert feats.shape[1] == 18
    pooled = model.forward_head(feats, pre_logits=True)
    torch.testing.assert_close(pooled, model.fc_norm(feats[:, 2:].mean(1)))


@pytest.mark.parametrize("deep", [False, True])
def test_token_reduction_protects_prompts(images, deep):
    model = make_tiny("vit")  # 16 patches + cls
    vitkit.apply_(model, PromptConfig(num_tokens=4, deep=deep))
    report = vitkit.apply_(model, ToMeConfig(r=8))
    counts = report.steps[0].decisions["tokens_per_layer"]
    # prefix = cls + 4 prompts: ToMe merges at most half of the 16 *patch* tokens, prompts are never merged
    assert counts == [21, 13, 9, 7]
    seen = []
    for blk in model.blocks:
        blk.register_forward_pre_hook(lambda m, a, kw: seen.append(a[0].shape[1]), with_kwargs=True)
    model(images)
    assert seen == counts[:-1]


@pytest.mark.parametrize("cfg", [AdapterConfig(bottleneck=6), PromptConfig(num_tokens=3, deep=True)])
def test_artifact_round_trip(tmp_path, images, cfg):
    model = make_tiny("distilled")
    vitkit.apply_(model, cfg)
    _perturb_adapters(model)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "vpt_prompt" in n:
                p.normal_()
    ref = model(images).detach()
    vitkit.save_artifact(model, None, None, tmp_path / "a")
    loaded = vitkit.load(tmp_path / "a")
    torch.testing.assert_close(loaded(images), ref, rtol=1e-6, atol=1e-6)
    assert adapter_kind(loaded) == adapter_kind(model)


def test_prompt_bad_input():
    with pytest.raises(ConfigError, match="num_tokens must be a positive int"):
        PromptConfig(num_tokens=0)
    with pytest.raises(ConfigError, match="takes no targets"):
        PromptConfig(targets=["blocks.0"])


def test_adaptation_attaches_through_the_host_adapter():
    import timm

    from vitkit import UnsupportedModelError
    from vitkit.adapters import adapter_for

    model = make_tiny("vit")
    host = adapter_for(model)
    assert host.mlp_branch_dim(model, "blocks.1") == describe(model).embed_dim
    vitkit.apply_(model, AdapterConfig(bottleneck=4))
    assert type(model.blocks[0].mlp).__name__ == "AdaptFormerMlp" and isinstance(model.blocks[0].mlp, AdaptFormerMlp)
    glu = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, mlp_layer=timm.layers.GluMlp)
    vitkit.apply_(glu, AdapterConfig(bottleneck=4))  # a GLU MLP takes the parallel branch too (same input, norm2 x)
    assert type(glu.blocks[0].mlp).__name__ == "AdaptFormerMlp" and hasattr(glu.blocks[0].mlp, "chunk_dim")
    dynamic = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, dynamic_img_size=True)
    with pytest.raises(UnsupportedModelError, match="dynamic_img_size"):
        vitkit.apply_(dynamic, PromptConfig(num_tokens=2), dry_run=True)
    prompted = make_tiny("vit")
    decisions = vitkit.apply_(prompted, PromptConfig(num_tokens=2)).steps[0].decisions
    assert decisions["prefix_tokens"] == 3 and type(prompted).__name__ == "PromptVisionTransformer"
