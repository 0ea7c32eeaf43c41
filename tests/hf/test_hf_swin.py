"""HF Swin ⇄ timm Swin: tiny random-init ``transformers`` models converted exactly, both directions.

Properties: the timm model computes the HF logits / pooled features within 1e-5 on random and real (digits)
images; ``to_hf(to_timm(x))`` gives back every key and tensor; the written config loads in ``transformers`` and
computes the same; configs the two libraries compute differently are refused naming the field.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

T = pytest.importorskip("transformers", reason="vitkit[hf] extra not installed")

from safetensors.torch import load_file, save_file  # noqa: E402

from vitkit.errors import UnsupportedModelError  # noqa: E402
from vitkit.models.hf.convert_swin import accepts_timm, swin_to_hf, swin_to_timm  # noqa: E402
from vitkit.models.hf.registry import converter_for, converter_for_timm  # noqa: E402
from vitkit.models.load import build_arch, load_state_dict_strict  # noqa: E402

from .helpers import perturb_, save_and_read  # noqa: E402

TINY = dict(image_size=32, patch_size=2, embed_dim=16, depths=[2, 2, 2], num_heads=[2, 2, 4], window_size=4)


def _images(size=(32, 32), n_random=2) -> torch.Tensor:
    """Random images plus a few real ones (scikit-learn digits, upsampled, 3 channels)."""
    from sklearn.datasets import load_digits

    digits = torch.tensor(load_digits().images[:3], dtype=torch.float32)[:, None] / 16.0  # (3, 1, 8, 8)
    real = torch.nn.functional.interpolate(digits, size=size, mode="bilinear").repeat(1, 3, 1, 1)
    g = torch.Generator().manual_seed(0)
    return torch.cat([torch.randn(n_random, 3, *size, generator=g), (real - 0.5) / 0.25])


def _hf_model(cls, seed=0, **cfg):
    torch.manual_seed(seed)
    model = cls(T.SwinConfig(**{**TINY, **cfg}))
    perturb_(model.named_parameters())  # HF zero-inits the bias tables and unit-inits the norms
    return model.eval()


def _hf_out(model, x):
    with torch.no_grad():
        out = model(pixel_values=x)
    return out.logits if hasattr(out, "logits") else out.pooler_output


def _timm(name, kwargs, state):
    model = build_arch(name, kwargs)
    load_state_dict_strict(model, state)
    return model


def _write(path, config, state):
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


@pytest.mark.parametrize(
    "cls,cfg",
    [
        ("SwinForImageClassification", dict(num_labels=5)),
        ("SwinModel", {}),
        ("SwinForImageClassification", dict(num_labels=3, qkv_bias=False, mlp_ratio=2.0)),
        ("SwinModel", dict(image_size=[32, 64], depths=[2, 2], num_heads=[2, 4])),  # non-square, all shifted
    ],
)
def test_hf_to_timm_exact_and_round_trip(tmp_path, cls, cfg):
    hf = _hf_model(getattr(T, cls), **cfg)
    config, state = save_and_read(hf, tmp_path / "hf")
    name, kwargs, timm_state = swin_to_timm(config, state)
    assert yaml.safe_load(yaml.safe_dump(kwargs)) == kwargs  # artifacts rebuild from the YAML record
    model = _timm(name, kwargs, timm_state)
    size = tuple(config["image_size"]) if isinstance(config["image_size"], list) else (32, 32)
    x = _images(size)
    with torch.no_grad():
        ours = model(x)
    want = _hf_out(hf, x)
    assert ours.shape == want.shape
    assert (ours - want).abs().max().item() < 1e-5

    config2, state2 = swin_to_hf(name, kwargs, timm_state, config)
    assert sorted(state2) == sorted(state)
    assert all(torch.equal(state[k], state2[k]) for k in state)
    assert {k: v for k, v in config2.items() if config.get(k) != v} == {}
    back = getattr(T, cls).from_pretrained(_write(tmp_path / "back", config2, state2)).eval()
    assert (_hf_out(back, x) - want).abs().max().item() < 1e-5


def test_in_memory_key_layout_is_accepted(tmp_path):
    """transformers >= 5 names (attention.q_proj, mlp.fc1, ...) map like the on-disk ones."""
    hf = _hf_model(T.SwinForImageClassification, num_labels=4)
    name, kwargs, timm_state = swin_to_timm(hf.config.to_dict(), dict(hf.state_dict()))
    x = _images()
    with torch.no_grad():
        assert (_timm(name, kwargs, timm_state)(x) - _hf_out(hf, x)).abs().max().item() < 1e-5


def test_timm_to_hf_without_source_config(tmp_path):
    """A timm Swin built by vitkit (no HF folder behind it) exports to a folder transformers loads and matches."""
    torch.manual_seed(1)
    kwargs = dict(
        img_size=32, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, num_classes=6
    )
    model = build_arch("swin_tiny_patch4_window7_224", kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert accepts_timm("swin_tiny_patch4_window7_224", kwargs)
    config, state = swin_to_hf("swin_tiny_patch4_window7_224", kwargs, model.state_dict(), None)
    hf, info = T.SwinForImageClassification.from_pretrained(
        _write(tmp_path / "out", config, state), output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    x = _images()
    with torch.no_grad():
        assert (_hf_out(hf.eval(), x) - model(x)).abs().max().item() < 1e-5


@pytest.mark.parametrize(
    "cfg,field",
    [
        (dict(layer_norm_eps=1e-6), "layer_norm_eps"),
        (dict(use_absolute_embeddings=True), "use_absolute_embeddings"),
        (dict(hidden_act="relu"), "hidden_act"),
        (dict(image_size=36), "window_size"),  # stage grids 18, 9, 5: not multiples of the window
        (dict(window_size=8, depths=[2, 2, 2]), "window_size"),  # last stage grid 4 < window 8
        (dict(image_size=33), "patch_size"),
    ],
)
def test_unsupported_configs_name_the_field(cfg, field):
    config = T.SwinConfig(**{**TINY, **cfg}).to_dict()
    with pytest.raises(UnsupportedModelError, match=field):
        swin_to_timm(config, {})


def test_registry_and_timm_side():
    assert converter_for("swin").to_timm is swin_to_timm
    assert converter_for_timm("swin_tiny_patch4_window7_224", {}).to_hf is swin_to_hf
    assert not accepts_timm("swinv2_tiny_window8_256", {})
    assert not accepts_timm("vit_tiny_patch16_224", {})
    with pytest.raises(UnsupportedModelError, match="global_pool"):
        swin_to_hf("swin_tiny_patch4_window7_224", {"global_pool": "max", "num_classes": 0}, {}, None)
    with pytest.raises(UnsupportedModelError, match="window"):
        swin_to_hf("swin_tiny_patch4_window7_224", {"window_size": [7, 7, 7, 4]}, {}, None)


def test_vitkit_load_reads_a_swin_folder(tmp_path):
    """Through the folder reader: ``vitkit.load(save_pretrained_dir)`` gives the exact timm Swin."""
    import vitkit

    hf = _hf_model(T.SwinForImageClassification, num_labels=5)
    hf.save_pretrained(tmp_path)
    model = vitkit.load(tmp_path)
    assert model.vitkit_arch["hf"]["model_type"] == "swin"
    x = _images()
    with torch.no_grad():
        assert (model(x) - _hf_out(hf, x)).abs().max().item() < 1e-5
    # and back from the loaded model's arch record, as the HF export does
    rec = model.vitkit_arch
    conv = converter_for_timm(rec["name"], rec["kwargs"])
    assert conv is converter_for("swin")
    _, state2 = conv.to_hf(rec["name"], rec["kwargs"], model.state_dict(), rec["hf"]["config"])
    state = load_file(str(tmp_path / "model.safetensors"))
    assert sorted(state2) == sorted(state) and all(torch.equal(state[k], state2[k]) for k in state)
