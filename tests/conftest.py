"""Shared fixtures: tiny random-init timm ViTs in every configuration vitkit must handle (no download)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach the network (set before huggingface_hub is imported)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

#: name → timm kwargs on top of a tiny vit_tiny_patch16_224 (32x32 input, patch 8 → 16 patches).
TINY_BASE = dict(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3, num_classes=10)
VARIANTS = {
    "vit": {},
    "layerscale": {"init_values": 0.1},
    "qknorm": {"qk_norm": True},
    "registers": {"reg_tokens": 4},
    "avgpool": {"class_token": False, "global_pool": "avg"},
    "distilled": {"_arch": "deit_tiny_distilled_patch16_224"},
}


def make_tiny(variant: str = "vit", seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny random-init timm ViT of the given variant, built through vitkit.load (so it can be saved)."""
    import vitkit

    kw = dict(TINY_BASE)
    extra = dict(VARIANTS[variant])
    arch = extra.pop("_arch", "vit_tiny_patch16_224")
    kw.update(extra)
    kw.update(overrides)
    torch.manual_seed(seed)
    model = vitkit.load(arch, **kw)
    # random init leaves LayerScale at 0.1 and qk-norm at identity-ish; perturb so tests see real effects
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma") or "norm" in name:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(params=list(VARIANTS))
def tiny_variant(request):
    return request.param, make_tiny(request.param)


@pytest.fixture
def tiny_model():
    return make_tiny("vit")


@pytest.fixture
def images():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


#: Model families beyond the plain ViT (issue 23): name → (timm arch, tiny random-init kwargs, input side).
FAMILIES = {
    "swin": (
        "swin_tiny_patch4_window7_224",
        dict(img_size=32, patch_size=2, window_size=4, embed_dim=24, depths=(2, 2), num_heads=(2, 4), num_classes=10),
        32,
    ),
    "tiny_vit": (
        "tiny_vit_5m_224",
        dict(
            embed_dims=(16, 32, 48, 64),
            depths=(1, 1, 1, 1),
            num_heads=(1, 2, 3, 4),
            window_sizes=(2, 2, 2, 1),
            pretrained_cfg_overlay=dict(input_size=(3, 64, 64)),  # any size runs; this one is the model's
        ),
        64,
    ),
    "efficientformer": (
        "efficientformer_l1",
        dict(depths=(1, 1, 1, 2), embed_dims=(16, 24, 32, 48), num_vit=1),  # attention biases fixed at 7×7: 224 input
        224,
    ),
    "eva02": ("eva02_tiny_patch14_224", dict(TINY_BASE), 32),
    "siglip": ("vit_base_patch16_siglip_224", dict(TINY_BASE), 32),
    "vitamin": ("vitamin_small_224", dict(img_size=64, depth=2), 64),  # conv stem (HybridEmbed) + GeGLU MLPs
}


def make_family(family: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny random-init model of ``family`` (see :data:`FAMILIES`), built through vitkit.load; norms perturbed."""
    import vitkit

    arch, kw, _ = FAMILIES[family]
    kw = dict(kw, num_classes=10, **overrides)
    torch.manual_seed(seed)
    model = vitkit.load(arch, **kw)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma") or "norm" in name:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def family_images(family: str, n: int = 4) -> torch.Tensor:
    side = FAMILIES[family][2]
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(1))
