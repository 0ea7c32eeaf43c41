"""HF CLIP / SigLIP vision towers ⇄ timm VisionTransformer: tiny random-init models converted exactly, both ways.

Properties: the timm model computes the HF pooled output / image embeddings within 1e-5 on random and real
(digits) images; ``to_hf(to_timm(x))`` gives back every vision key and tensor; the written config loads in
``transformers`` and computes the same; unsupported features are refused naming the field.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

T = pytest.importorskip("transformers", reason="vitkit[hf] extra not installed")

from safetensors.torch import load_file, save_file  # noqa: E402

from vitkit.errors import UnsupportedModelError  # noqa: E402
from vitkit.models.hf.convert_clip import _mlp_ratio, accepts_timm, vision_to_hf, vision_to_timm  # noqa: E402
from vitkit.models.hf.registry import converter_for, converter_for_timm  # noqa: E402
from vitkit.models.load import build_arch, load_state_dict_strict  # noqa: E402

from .helpers import perturb_, save_and_read  # noqa: E402

VISION = dict(
    image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
)
TEXT = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99,
    max_position_embeddings=16, bos_token_id=0, eos_token_id=2, pad_token_id=1,
)  # fmt: skip


def _images(n_random=2) -> torch.Tensor:
    """Random images plus a few real ones (scikit-learn digits, upsampled to 32x32, 3 channels)."""
    from sklearn.datasets import load_digits

    digits = torch.tensor(load_digits().images[:3], dtype=torch.float32)[:, None] / 16.0  # (3, 1, 8, 8)
    real = torch.nn.functional.interpolate(digits, size=(32, 32), mode="bilinear").repeat(1, 3, 1, 1)
    g = torch.Generator().manual_seed(0)
    return torch.cat([torch.randn(n_random, 3, 32, 32, generator=g), (real - 0.5) / 0.25])


def _perturbed(model, seed=0):
    torch.manual_seed(seed)
    perturb_(model.named_parameters())
    return model.eval()


def _write(path, config, state):
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def _hf_out(model, x):
    """What the timm model must compute: image embeddings when there is a projection, else the pooled output."""
    with torch.no_grad():
        if isinstance(model, T.CLIPModel):
            return model.visual_projection(model.vision_model(pixel_values=x).pooler_output)
        if isinstance(model, T.SiglipModel):
            return model.vision_model(pixel_values=x).pooler_output
        out = model(pixel_values=x)
    return out.image_embeds if hasattr(out, "image_embeds") else out.pooler_output


def _timm(name, kwargs, state):
    model = build_arch(name, kwargs)
    load_state_dict_strict(model, state)
    return model


def _max_diff(a, b) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


VISION_CASES = {
    "clip_vision": (T.CLIPVisionModel, T.CLIPVisionConfig, {}),
    "clip_vision_projection": (T.CLIPVisionModelWithProjection, T.CLIPVisionConfig, dict(projection_dim=16)),
    "clip_gelu_eps": (T.CLIPVisionModel, T.CLIPVisionConfig, dict(hidden_act="gelu", layer_norm_eps=1e-6)),
    "siglip_vision": (T.SiglipVisionModel, T.SiglipVisionConfig, {}),
    "siglip_eps_ratio": (T.SiglipVisionModel, T.SiglipVisionConfig, dict(layer_norm_eps=1e-5, intermediate_size=50)),
}


@pytest.mark.parametrize("case", list(VISION_CASES))
def test_vision_tower_exact_and_round_trip(tmp_path, case):
    cls, cfg_cls, extra = VISION_CASES[case]
    hf = _perturbed(cls(cfg_cls(**{**VISION, **extra})))
    config, state = save_and_read(hf, tmp_path / "hf")
    name, kwargs, timm_state = vision_to_timm(config, state)
    assert yaml.safe_load(yaml.safe_dump(kwargs)) == kwargs  # artifacts rebuild from the YAML record
    if "layer_norm_eps" in extra:
        assert kwargs["vitkit_norm_eps"] == extra["layer_norm_eps"]
    model = _timm(name, kwargs, timm_state)
    x = _images()
    want = _hf_out(hf, x)
    with torch.no_grad():
        assert _max_diff(model(x), want) < 1e-5

    assert accepts_timm(name, kwargs)
    config2, state2 = vision_to_hf(name, kwargs, timm_state, config)
    assert sorted(state2) == sorted(state)
    assert all(torch.equal(state[k], state2[k]) for k in state)
    assert {k: v for k, v in config2.items() if config.get(k) != v} == {}
    back, info = cls.from_pretrained(_write(tmp_path / "back", config2, state2), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert _max_diff(_hf_out(back.eval(), x), want) < 1e-5


def test_full_clip_model_takes_vision_tower_and_projection(tmp_path):
    config = T.CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=16)
    hf = _perturbed(T.CLIPModel(config))
    config, state = save_and_read(hf, tmp_path / "hf")
    name, kwargs, timm_state = vision_to_timm(config, state)
    assert kwargs["num_classes"] == 16 and not timm_state["head.bias"].any()
    x = _images()
    want = _hf_out(hf, x)
    with torch.no_grad():
        assert _max_diff(_timm(name, kwargs, timm_state)(x), want) < 1e-5
    # back: a CLIPVisionModelWithProjection folder holding exactly the vision keys of the source
    config2, state2 = vision_to_hf(name, kwargs, timm_state, config)
    vision_keys = [k for k in state if k.startswith(("vision_model.", "visual_projection."))]
    assert sorted(state2) == sorted(vision_keys)
    assert all(torch.equal(state[k], state2[k]) for k in vision_keys)
    assert config2["model_type"] == "clip_vision_model" and config2["projection_dim"] == 16
    back = T.CLIPVisionModelWithProjection.from_pretrained(_write(tmp_path / "back", config2, state2)).eval()
    assert _max_diff(_hf_out(back, x), want) < 1e-5


def test_full_siglip_model_takes_vision_tower(tmp_path):
    config = T.SiglipConfig(text_config={k: v for k, v in TEXT.items() if "token_id" not in k}, vision_config=VISION)
    hf = _perturbed(T.SiglipModel(config))
    config, state = save_and_read(hf, tmp_path / "hf")
    name, kwargs, timm_state = vision_to_timm(config, state)
    x = _images()
    want = _hf_out(hf, x)
    with torch.no_grad():
        assert _max_diff(_timm(name, kwargs, timm_state)(x), want) < 1e-5
    config2, state2 = vision_to_hf(name, kwargs, timm_state, config)
    assert config2["model_type"] == "siglip_vision_model"
    vision = {k.removeprefix("vision_model."): v for k, v in state.items() if k.startswith("vision_model.")}
    assert sorted(state2) == sorted(vision) and all(torch.equal(vision[k], state2[k]) for k in vision)
    back = T.SiglipVisionModel.from_pretrained(_write(tmp_path / "back", config2, state2)).eval()
    assert _max_diff(_hf_out(back, x), want) < 1e-5


def test_prefixed_vision_keys_are_accepted(tmp_path):
    """Older CLIPVisionModel folders store ``vision_model.``-prefixed keys."""
    hf = _perturbed(T.CLIPVisionModel(T.CLIPVisionConfig(**VISION)))
    config, state = save_and_read(hf, tmp_path / "hf")
    name, kwargs, timm_state = vision_to_timm(config, {f"vision_model.{k}": v for k, v in state.items()})
    x = _images()
    with torch.no_grad():
        assert _max_diff(_timm(name, kwargs, timm_state)(x), _hf_out(hf, x)) < 1e-5


def test_timm_clip_tower_exports_without_source_config(tmp_path):
    torch.manual_seed(0)
    kwargs = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=8, act_layer="quick_gelu")
    model = _perturbed(build_arch("vit_base_patch16_clip_224", kwargs))
    with torch.no_grad():
        model.head.bias.zero_()
    config, state = vision_to_hf("vit_base_patch16_clip_224", kwargs, model.state_dict(), None)
    back = T.CLIPVisionModelWithProjection.from_pretrained(_write(tmp_path / "out", config, state)).eval()
    x = _images()
    with torch.no_grad():
        assert _max_diff(_hf_out(back, x), model(x)) < 1e-5
    with torch.no_grad():
        model.head.bias.fill_(0.5)
    with pytest.raises(UnsupportedModelError, match="bias"):
        vision_to_hf("vit_base_patch16_clip_224", kwargs, model.state_dict(), None)


@pytest.mark.parametrize(
    "model_type,cfg,field",
    [
        ("clip_vision_model", dict(hidden_act="gelu_new"), "hidden_act"),
        ("clip_vision_model", dict(image_size=30), "image_size"),
        ("siglip_vision_model", dict(vision_use_head=False), "vision_use_head"),
    ],
)
def test_unsupported_configs_name_the_field(model_type, cfg, field):
    with pytest.raises(UnsupportedModelError, match=field):
        vision_to_timm({"model_type": model_type, **VISION, **cfg}, {})


def test_registry_and_timm_side():
    for t in ("clip_vision_model", "clip", "siglip_vision_model", "siglip"):
        assert converter_for(t).to_timm is vision_to_timm
    assert converter_for_timm("vit_base_patch16_siglip_224", {}).to_hf is vision_to_hf
    assert not accepts_timm("vit_tiny_patch16_224", {})  # plain ViT: the ViT converter's
    assert not accepts_timm("vit_base_patch16_clip_224", {"reg_tokens": 4})
    assert not accepts_timm("swin_tiny_patch4_window7_224", {})
    with pytest.raises(UnsupportedModelError, match="CLIP or SigLIP"):
        vision_to_hf("vit_tiny_patch16_224", {}, {}, None)
    assert int(1152 * _mlp_ratio(1152, 4304)) == 4304  # so400m's width survives float rounding


@pytest.mark.parametrize("model_type", ["clip_vision_model", "clip", "siglip_vision_model", "siglip"])
def test_vitkit_load_reads_the_folder(tmp_path, model_type):
    """Through the folder reader: ``vitkit.load(save_pretrained_dir)`` gives the exact timm tower."""
    import vitkit

    siglip_text = {k: v for k, v in TEXT.items() if "token_id" not in k}
    hf = {
        "clip_vision_model": lambda: T.CLIPVisionModelWithProjection(T.CLIPVisionConfig(**VISION, projection_dim=8)),
        "clip": lambda: T.CLIPModel(T.CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=8)),
        "siglip_vision_model": lambda: T.SiglipVisionModel(T.SiglipVisionConfig(**VISION)),
        "siglip": lambda: T.SiglipModel(T.SiglipConfig(text_config=siglip_text, vision_config=VISION)),
    }[model_type]()
    hf = _perturbed(hf)
    hf.save_pretrained(tmp_path)
    model = vitkit.load(tmp_path)
    assert model.vitkit_arch["hf"]["model_type"] == model_type
    x = _images()
    with torch.no_grad():
        assert _max_diff(model(x), _hf_out(hf, x)) < 1e-5
    # and back from the loaded model's arch record, as the HF export does: the vision keys of the folder
    rec = model.vitkit_arch
    conv = converter_for_timm(rec["name"], rec["kwargs"])
    assert conv is converter_for(model_type)
    _, state2 = conv.to_hf(rec["name"], rec["kwargs"], model.state_dict(), rec["hf"]["config"])
    state = load_file(str(tmp_path / "model.safetensors"))
    if model_type == "siglip":  # SiglipVisionModel keys carry no prefix
        state = {k.removeprefix("vision_model."): v for k, v in state.items() if k.startswith("vision_model.")}
    state = {k: v for k, v in state.items() if not k.startswith(("text_", "logit_"))}
    assert sorted(state2) == sorted(state) and all(torch.equal(state[k], state2[k]) for k in state)
