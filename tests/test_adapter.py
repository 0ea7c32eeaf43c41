import pytest
import timm
import torch
from timm.models.vision_transformer import ResPostBlock, VisionTransformer

from vitkit import UnsupportedModelError
from vitkit.adapters import TIMM_VIT, HostAdapter, adapter_for, block_parts, describe, run_forward
from vitkit.adapters.runtime import HostRun, block_modules

from .conftest import VARIANTS, make_tiny

EXPECTED = {
    "vit": (1, set()),
    "layerscale": (1, {"layer_scale"}),
    "qknorm": (1, {"qk_norm"}),
    "registers": (5, {"reg_tokens"}),
    "avgpool": (0, {"no_class_token", "avg_pool"}),
    "distilled": (2, {"dist_token"}),
}


@pytest.mark.parametrize("variant", list(EXPECTED))
def test_describe_variants(variant):
    model = make_tiny(variant)
    info = describe(model)
    prefix, features = EXPECTED[variant]
    assert info.num_prefix_tokens == prefix
    assert info.features == features
    assert info.depth == 3 and info.embed_dim == 48 and info.num_heads == (3, 3, 3) and info.head_dim == (16,) * 3
    assert info.grid_size == (4, 4) and info.num_tokens == 16 + prefix and info.in_chans == 3
    parts = block_parts(model.blocks[0])
    assert parts.attn is model.blocks[0].attn and parts.mlp is model.blocks[0].mlp


def test_real_deit_shapes():
    info = describe(timm.create_model("deit_small_patch16_224"))
    assert (info.depth, info.embed_dim, info.num_heads[0], info.head_dim[0], info.num_tokens) == (12, 384, 6, 64, 197)


@pytest.mark.parametrize("name", ["test_resnet", "test_convnext"])
def test_non_vit_is_refused(name):
    with pytest.raises(UnsupportedModelError, match="is not a plain ViT \\(yet\\)"):
        describe(timm.create_model(name))


def test_swin_is_refused():
    model = timm.create_model("swin_tiny_patch4_window7_224", depths=(1, 1, 1, 1), embed_dim=32, num_heads=(1, 2, 4, 8))
    with pytest.raises(UnsupportedModelError, match="SwinTransformer is not a plain ViT"):
        describe(model)


def test_unsupported_block_named():
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, block_fn=ResPostBlock)
    with pytest.raises(UnsupportedModelError, match="blocks.0 is a ResPostBlock"):
        describe(model)


def test_attention_pool_handled_and_unhandled_variant_named():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, global_pool="map")
    assert "attn_pool" in describe(model).features  # SigLIP-style head: tests/families/test_siglip.py
    model.attn_pool.mlp = None
    with pytest.raises(UnsupportedModelError, match="attn_pool has no MLP"):
        describe(model)


# -- the host forward through the adapter: embed → blocks → pool → head --------------------------------------
def _images(n=3, seed=2):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_timm_adapter_implements_the_protocol():
    model = make_tiny("vit")
    host = adapter_for(model)
    assert host is TIMM_VIT and isinstance(host, HostAdapter)
    with pytest.raises(UnsupportedModelError, match="not a model family vitkit has an adapter for"):
        adapter_for(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_through_the_adapter_is_bit_identical(variant):
    model = make_tiny(variant)
    host, x = adapter_for(model), _images()
    with torch.no_grad():
        ref, ref_feats = model(x), model.forward_features(x)
        run = HostRun(model)
        tokens = run.tokens(x)
        assert torch.equal(run_forward(model, x), ref)
        assert torch.equal(run.logits(tokens), ref)
        assert torch.equal(run.features(tokens), ref_feats)
        assert torch.equal(host.head(model, host.pool(model, tokens)), ref)
        blocks = block_modules(model)  # a block = attention half then MLP half
        h = host.embed(model, x)
        half, extras = host.attention_residual(blocks[0], h)
        assert extras == {} and torch.equal(host.mlp_residual(blocks[0], half), blocks[0](h))
    assert run.depth == 3 and run.size is None
    assert host.token_grid(model, x) == (4, 4) and host.prefix_tokens(model) == describe(model).num_prefix_tokens


@pytest.mark.parametrize("variant", ["vit", "avgpool"])
def test_unit_token_sizes_pool_like_the_plain_model(variant):
    model = make_tiny(variant)
    host, x = adapter_for(model), _images()
    with torch.no_grad():
        tokens = HostRun(model).tokens(x)
        plain = host.pool(model, tokens)
        sized = host.pool(model, tokens, size=torch.ones(*tokens.shape[:2], 1))
    torch.testing.assert_close(sized, plain, rtol=1e-6, atol=1e-6)


def test_attention_extras_match_the_attention_maps():
    model = make_tiny("vit")
    host, block = adapter_for(model), block_modules(model)[0]
    with torch.no_grad():
        h = host.embed(model, _images())
        out, extras = host.attention_residual(block, h, needs=frozenset({"metric", "global_attn"}))
        plain, _ = host.attention_residual(block, h)
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-6)
    assert extras["metric"].shape == (3, 17, 16)
    torch.testing.assert_close(extras["global_attn"].sum(-1), torch.ones(3))  # each query row sums to 1
    torch.testing.assert_close(extras["cls_attn"].sum(-1), torch.ones(3))


def test_block_linears_and_branches_by_role():
    model = make_tiny("vit")
    host, block = adapter_for(model), block_modules(model)[1]
    lin = host.block_linears(block, index=1)
    assert set(lin) == {"qkv", "attn_out", "attn_gate", "mlp_in", "mlp_out"} and lin["attn_gate"] is None
    assert lin["qkv"].out_features == 3 * 48 and lin["mlp_in"].out_features == lin["mlp_out"].in_features
    attn_branch, mlp_branch = host.residual_branches(block, index=1)
    x = torch.randn(2, 17, 48)
    with torch.no_grad():
        y, _ = host.attention_residual(block, x)
        assert torch.equal(x + attn_branch(x), y)  # no layer scale, no drop path at eval
        assert torch.equal(x + mlp_branch(x), host.mlp_residual(block, x))
    assert host.feature_norm(model) is model.norm and host.heads(model)[0][1] is model.head
