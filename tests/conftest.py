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
