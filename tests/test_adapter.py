import pytest
import timm
from timm.models.vision_transformer import ResPostBlock, VisionTransformer

from vitkit import UnsupportedModelError
from vitkit.adapters import block_parts, describe

from .conftest import make_tiny

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


def test_attention_pool_named():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, global_pool="map")
    with pytest.raises(UnsupportedModelError, match="attention-pool head"):
        describe(model)
