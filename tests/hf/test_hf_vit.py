"""transformers ViT / DeiT / DINOv2 folders load as exact timm models; to_hf(to_timm(x)) == x; artifacts keep them."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import vitkit
from vitkit.models.hf.registry import converter_for, converter_for_timm

from .helpers import perturb_

transformers = pytest.importorskip("transformers", reason="vitkit[hf] extra not installed")

TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
)
#: case → (transformers class name, config class name, config overrides on top of TINY)
CASES = {
    "vit_cls": ("ViTForImageClassification", "ViTConfig", dict(num_labels=5)),
    "vit_cls_nolabels": ("ViTForImageClassification", "ViTConfig", dict(num_labels=0)),
    "vit_backbone": ("ViTModel", "ViTConfig", {}),
    "vit_variants": (
        "ViTForImageClassification",
        "ViTConfig",
        dict(num_labels=3, hidden_act="gelu_new", layer_norm_eps=1e-5, qkv_bias=False, image_size=[32, 48]),
    ),
    "vit_quick_gelu_1ch": ("ViTForImageClassification", "ViTConfig", dict(hidden_act="quick_gelu", num_channels=1)),
    "deit_teacher": ("DeiTForImageClassificationWithTeacher", "DeiTConfig", dict(num_labels=4)),
    "deit_backbone": ("DeiTModel", "DeiTConfig", {}),
    "dinov2": ("Dinov2Model", "Dinov2Config", dict(layerscale_value=0.5)),
    "dinov2_ratio3": ("Dinov2Model", "Dinov2Config", dict(mlp_ratio=3, hidden_act="relu")),
    "dinov2_swiglu": ("Dinov2Model", "Dinov2Config", dict(use_swiglu_ffn=True)),
}


def make_hf(case: str, seed: int = 0, **overrides):
    """A tiny random-init transformers model of ``case`` (eval mode, every weight perturbed off its init)."""
    cls_name, cfg_name, extra = CASES[case]
    cfg = getattr(transformers, cfg_name)(**{**TINY, **extra, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(cfg).eval()
    # mask_token stays at its init (zeros): see convert_vit's docstring
    perturb_(model.named_parameters(), keep=lambda name, p: "mask_token" not in name)
    return model


def images_for(model, n: int = 3) -> torch.Tensor:
    c = model.config
    h, w = c.image_size if isinstance(c.image_size, (list, tuple)) else (c.image_size, c.image_size)
    return torch.randn(n, c.num_channels, h, w, generator=torch.Generator().manual_seed(1))


def reference(hf, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the exactness target, last_hidden_state): logits, or the features timm defines for a backbone."""
    with torch.no_grad():
        if hasattr(hf, "classifier") or hasattr(hf, "cls_classifier"):
            out = hf(pixel_values=x, output_hidden_states=True)
            return out.logits, out.hidden_states[-1]  # hidden_states[-1] is before the final norm
        out = hf(pixel_values=x)
        lhs = out.last_hidden_state
        target = (lhs[:, 0] + lhs[:, 1]) / 2 if type(hf).__name__ == "DeiTModel" else lhs[:, 0]
        return target, lhs


@pytest.fixture(params=list(CASES))
def saved(request, tmp_path):
    hf = make_hf(request.param)
    hf.save_pretrained(tmp_path / "hf")
    return request.param, hf, tmp_path / "hf"


def test_folder_loads_exactly(saved):
    case, hf, folder = saved
    model = vitkit.load(folder)
    x = images_for(hf)
    target, lhs = reference(hf, x)
    with torch.no_grad():
        out = model(x)
        feats = model.forward_features(x)
    assert out.shape == target.shape
    assert (out - target).abs().max().item() <= 1e-5
    if not hasattr(hf, "classifier") and not hasattr(hf, "cls_classifier"):
        assert (feats - lhs).abs().max().item() <= 1e-5  # backbones: forward_features == last_hidden_state
    rec = model.vitkit_arch
    assert rec["hf"]["model_type"] == hf.config.model_type
    assert rec["hf"]["config"] == json.loads((folder / "config.json").read_text())
    assert rec["kwargs"]["vitkit_norm_eps"] == hf.config.layer_norm_eps
    assert all(m.eps == hf.config.layer_norm_eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm))


def test_round_trip_state_key_for_key(saved):
    case, hf, folder = saved
    config = json.loads((folder / "config.json").read_text())
    state = load_file(str(folder / "model.safetensors"))
    conv = converter_for(config["model_type"])
    name, kwargs, timm_state = conv.to_timm(config, state)
    assert converter_for_timm(name, kwargs) is conv
    cfg_back, state_back = conv.to_hf(name, kwargs, timm_state, config)
    pooler = {k for k in state if k.startswith("pooler.")}  # dropped by design (timm has no pooler)
    assert set(state_back) == set(state) - pooler
    for k, v in state_back.items():
        assert torch.equal(v, state[k]), k
    assert cfg_back == config


def test_to_hf_folder_loads_in_transformers(saved, tmp_path):
    """to_hf without the source config writes a complete config transformers builds the same model from."""
    case, hf, folder = saved
    model = vitkit.load(folder)
    rec = model.vitkit_arch
    conv = converter_for_timm(rec["name"], rec["kwargs"])
    cfg, state = conv.to_hf(rec["name"], rec["kwargs"], model.state_dict(), None)
    out_dir = tmp_path / "back"
    out_dir.mkdir()
    (out_dir / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_dir / "model.safetensors"))
    cls = getattr(transformers, cfg["architectures"][0])
    assert cls is (transformers.ViTModel if case == "vit_cls_nolabels" else type(hf))  # 0 labels: a backbone
    back = cls.from_pretrained(out_dir).eval()
    x = images_for(hf)
    assert (reference(back, x)[0] - reference(hf, x)[0]).abs().max().item() <= 1e-5
    assert (vitkit.load(out_dir)(x) - model(x)).abs().max().item() == 0


def test_artifact_round_trip(saved, tmp_path):
    from vitkit.artifact import save_artifact

    case, hf, folder = saved
    model = vitkit.load(folder)
    save_artifact(model, None, None, tmp_path / "art")
    back = vitkit.load(tmp_path / "art")
    x = images_for(hf)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)
    assert back.vitkit_arch["kwargs"] == model.vitkit_arch["kwargs"]
    assert all(m.eps == hf.config.layer_norm_eps for m in back.modules() if isinstance(m, torch.nn.LayerNorm))


def test_artifact_keeps_hf_record(tmp_path):
    from vitkit.artifact import save_artifact

    hf = make_hf("vit_cls")
    hf.save_pretrained(tmp_path / "hf")
    model = vitkit.load(tmp_path / "hf")
    save_artifact(model, None, None, tmp_path / "art")
    back = vitkit.load(tmp_path / "art")
    assert back.vitkit_arch["hf"] == model.vitkit_arch["hf"]


def test_pooler_drop_is_logged(tmp_path, caplog):
    hf = make_hf("vit_backbone")
    assert hf.pooler is not None
    hf.save_pretrained(tmp_path / "hf")
    with caplog.at_level("WARNING", logger="vitkit.models.hf.convert_vit"):
        vitkit.load(tmp_path / "hf")
    assert "dropped the pooler" in caplog.text and "last_hidden_state[:, 0]" in caplog.text


def test_mnist_images_and_preprocessor(tmp_path):
    """Real digits through vitkit's data pipeline (normalised with the folder's preprocessor mean/std)."""
    from vitkit.data.core import calibration_set, load_dataset

    hf = make_hf("vit_cls")
    hf.save_pretrained(tmp_path / "hf")
    pre = {"image_mean": [0.25, 0.5, 0.75], "image_std": [0.3, 0.4, 0.5], "resample": 3, "do_center_crop": False}
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(pre))
    model = vitkit.load(tmp_path / "hf")
    assert tuple(model.pretrained_cfg["mean"]) == (0.25, 0.5, 0.75)
    assert model.pretrained_cfg["interpolation"] == "bicubic"
    x = calibration_set(load_dataset("mnist5k", "test", model=model), 4)
    assert x.shape == (4, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - hf(pixel_values=x).logits).abs().max().item() <= 1e-5


def test_timm_native_vit_exports_and_reloads(tmp_path):
    """A ViT built from a timm name (no num_heads in its record) goes to HF and back exactly."""
    model = vitkit.load("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)
    conv = converter_for_timm("vit_tiny_patch16_224", model.vitkit_arch["kwargs"])
    assert conv is converter_for("vit")
    cfg, state = conv.to_hf("vit_tiny_patch16_224", model.vitkit_arch["kwargs"], model.state_dict(), None)
    assert cfg["layer_norm_eps"] == 1e-6 and cfg["num_attention_heads"] == 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    back = vitkit.load(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), rtol=0, atol=1e-6)


def test_to_hf_refuses_what_transformers_cannot_hold():
    from vitkit.errors import UnsupportedModelError

    kw = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)
    conv = converter_for("vit")
    model = vitkit.load("vit_tiny_patch16_224", **kw)
    state = dict(model.state_dict())
    state["blocks.1.mlp.fc1.weight"] = state["blocks.1.mlp.fc1.weight"][:100]  # a per-layer MLP width
    with pytest.raises(UnsupportedModelError, match="block 1 differs from block 0 at"):
        conv.to_hf("vit_tiny_patch16_224", model.vitkit_arch["kwargs"], state, None)
    state = dict(
        model.state_dict(), **{"blocks.0.extra.weight": torch.zeros(1), "blocks.1.extra.weight": torch.zeros(1)}
    )
    with pytest.raises(UnsupportedModelError, match=r"holds \['blocks.0.extra.weight'.*no place for"):
        conv.to_hf("vit_tiny_patch16_224", model.vitkit_arch["kwargs"], state, None)
    regs = vitkit.load("vit_tiny_patch16_224", reg_tokens=2, **kw)
    with pytest.raises(UnsupportedModelError, match="register tokens"):
        conv.to_hf("vit_tiny_patch16_224", regs.vitkit_arch["kwargs"], regs.state_dict(), None)
    avg = vitkit.load("vit_tiny_patch16_224", global_pool="avg", **kw)
    with pytest.raises(UnsupportedModelError, match="a norm after pooling"):
        conv.to_hf("vit_tiny_patch16_224", avg.vitkit_arch["kwargs"], avg.state_dict(), None)
