"""Reading transformers folders (sharded, .bin) and every kind of bad folder; vitkit_norm_eps; hub names in load()."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vitkit
from vitkit import CheckpointError, ConfigError
from vitkit.errors import UnsupportedModelError
from vitkit.models import build_arch

from .test_hf_vit import images_for, make_hf, reference

transformers = pytest.importorskip("transformers", reason="vitkit[hf] extra not installed")


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")}


@pytest.fixture
def vit_folder(tmp_path):
    hf = make_hf("vit_cls")
    hf.save_pretrained(tmp_path / "hf")
    return hf, tmp_path / "hf"


def _close(model, hf) -> float:
    x = images_for(hf)
    with torch.no_grad():
        return (model(x) - reference(hf, x)[0]).abs().max().item()


def test_sharded_safetensors(tmp_path):
    hf = make_hf("vit_cls")
    hf.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    shards = sorted((tmp_path / "hf").glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    assert _close(vitkit.load(tmp_path / "hf"), hf) <= 1e-5
    before = snapshot(tmp_path / "hf")
    shards[1].unlink()
    with pytest.raises(
        CheckpointError, match=f"shard {shards[1].name} listed in model.safetensors.index.json is missing"
    ):
        vitkit.load(tmp_path / "hf")
    assert snapshot(tmp_path / "hf") == {k: v for k, v in before.items() if k != shards[1].name}


def test_pytorch_bin_only(vit_folder):
    hf, folder = vit_folder
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    assert _close(vitkit.load(folder), hf) <= 1e-5


class _Opaque:
    def __init__(self):
        self.w = torch.ones(2)


def test_pickle_only_bin_is_refused(vit_folder):
    hf, folder = vit_folder
    (folder / "model.safetensors").unlink()
    torch.save({"obj": _Opaque()}, folder / "pytorch_model.bin")
    before = snapshot(folder)
    with pytest.raises(
        CheckpointError, match=r"weights_only=True\) refuses.*save_pretrained\(\.\.\., safe_serialization"
    ):
        vitkit.load(folder)
    assert snapshot(folder) == before


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "changes, match",
    [
        (
            {"model_type": "bert"},
            r"model_type 'bert' has no vitkit converter; supported model types: .*deit, dinov2",
        ),
        ({"model_type": None}, r"has no model_type: not a transformers save_pretrained folder"),
        ({"num_hidden_layers": 3}, r"config.json does not match the weights: missing \['encoder.layer.2"),
        ({"num_hidden_layers": 1}, r"config.json does not match the weights: unexpected \['encoder.layer.1"),
        ({"intermediate_size": 48}, r"config.json does not match the weights: shape mismatch"),
        ({"num_labels": 7, "id2label": None}, r"shape mismatch .*'classifier.weight \(5, 32\) vs \(7, 32\)'"),
    ],
)
def test_bad_config_is_one_line_checkpoint_error(vit_folder, changes, match):
    hf, folder = vit_folder
    _edit_config(folder, **changes)
    before = snapshot(folder)
    with pytest.raises(CheckpointError, match=match) as info:
        vitkit.load(folder)
    assert "\n" not in str(info.value)
    assert snapshot(folder) == before


def test_unsupported_activation_is_named(vit_folder):
    hf, folder = vit_folder
    _edit_config(folder, hidden_act="mish")
    with pytest.raises(UnsupportedModelError, match="hidden_act 'mish' has no exact timm activation"):
        vitkit.load(folder)


@pytest.mark.parametrize("cut", [0, 9, 300, -50])
def test_corrupt_safetensors(vit_folder, cut):
    hf, folder = vit_folder
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:cut] if cut else b"")
    before = snapshot(folder)
    with pytest.raises(CheckpointError, match="corrupt or truncated|is empty"):
        vitkit.load(folder)
    assert snapshot(folder) == before


def test_config_without_weights(vit_folder):
    hf, folder = vit_folder
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has a config.json but no weights"):
        vitkit.load(folder)


@pytest.mark.parametrize(
    "cls_name, cfg_name, match",
    [
        ("Dinov2ForImageClassification", "Dinov2Config", r"Dinov2ForImageClassification .*cat\(CLS, mean.*Dinov2Model"),
        (
            "DeiTForImageClassification",
            "DeiTConfig",
            r"DeiTForImageClassification .*WithTeacher",
        ),
        ("ViTForMaskedImageModeling", "ViTConfig", r"ViTForMaskedImageModeling .*ViTModel"),
    ],
)
def test_inexpressible_heads_are_refused_by_name(tmp_path, cls_name, cfg_name, match):
    from .test_hf_vit import TINY

    cfg = getattr(transformers, cfg_name)(**TINY, num_labels=3, encoder_stride=8)
    getattr(transformers, cls_name)(cfg).save_pretrained(tmp_path / "hf")
    with pytest.raises(UnsupportedModelError, match=match):
        vitkit.load(tmp_path / "hf")


def test_artifact_with_config_json_stays_an_artifact(vit_folder, tmp_path):
    from vitkit.artifact import save_artifact

    hf, folder = vit_folder
    model = vitkit.load(folder)
    save_artifact(model, None, None, tmp_path / "art")
    (tmp_path / "art" / "config.json").write_text((folder / "config.json").read_text())
    back = vitkit.load(tmp_path / "art")
    assert _close(back, hf) <= 1e-5


def test_folder_refuses_arch_argument(vit_folder):
    with pytest.raises(ConfigError, match="whose config.json sets the architecture: drop arch="):
        vitkit.load(vit_folder[1], arch="vit_tiny_patch16_224")


# ------------------------------------------------------------------------------------------------ vitkit_norm_eps
TINY_TIMM = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=4)


def test_norm_eps_applies_to_every_layernorm_and_survives_artifacts(tmp_path):
    from vitkit.artifact import save_artifact

    model = build_arch("vit_tiny_patch16_224", dict(TINY_TIMM, vitkit_norm_eps=1e-12))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1 and all(m.eps == 1e-12 for m in norms)
    assert model.vitkit_arch["kwargs"]["vitkit_norm_eps"] == 1e-12
    default = build_arch("vit_tiny_patch16_224", TINY_TIMM)
    assert all(m.eps == 1e-6 for m in default.modules() if isinstance(m, torch.nn.LayerNorm))
    # eps matters where a token's variance is tiny: the two models differ there
    x = torch.full((1, 3, 32, 32), 0.25)
    default.load_state_dict(model.state_dict())
    with torch.no_grad():
        for m in (model, default):
            m.patch_embed.proj.weight.mul_(1e-5), m.pos_embed.zero_(), m.cls_token.mul_(1e-5)
        assert (model(x) - default(x)).abs().max() > 1e-5
    save_artifact(model, None, None, tmp_path / "art")
    back = vitkit.load(tmp_path / "art")
    assert all(m.eps == 1e-12 for m in back.modules() if isinstance(m, torch.nn.LayerNorm))
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("eps", [0, -1e-6, "1e-12", True, 2.0])
def test_bad_norm_eps(eps):
    with pytest.raises(ConfigError, match="vitkit_norm_eps must be a float in"):
        build_arch("vit_tiny_patch16_224", dict(TINY_TIMM, vitkit_norm_eps=eps))


# ---------------------------------------------------------------------------------------------------- hub names
@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    return cache


@pytest.mark.parametrize("name", ["hf-hub:someone/some-vit", "timm/vit_tiny_patch16_224.augreg_in21k"])
def test_hub_name_offline_says_could_not_download(empty_hub_cache, name):
    with pytest.raises(CheckpointError, match=r"could not download the Hub config for .*offline\?.*local checkpoint"):
        vitkit.load(name)
    with pytest.raises(CheckpointError, match="could not download pretrained weights"):
        vitkit.load(name, pretrained=True)


def test_hub_name_from_cache_records_a_rebuildable_arch(empty_hub_cache):
    """A cached timm hub config works offline; the record names the timm arch + the Hub's args (no hub needed)."""
    snap = empty_hub_cache / "models--timm--tiny_test_vit" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (empty_hub_cache / "models--timm--tiny_test_vit" / "refs").mkdir()
    (empty_hub_cache / "models--timm--tiny_test_vit" / "refs" / "main").write_text("0" * 40)
    cfg = {
        "architecture": "vit_tiny_patch16_224",
        "num_classes": 7,
        "model_args": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3},
        "pretrained_cfg": {
            "input_size": [3, 32, 32],
            "mean": [0.1, 0.2, 0.3],
            "std": [0.5, 0.5, 0.5],
            "num_classes": 7,
        },
    }
    (snap / "config.json").write_text(json.dumps(cfg))
    for name in ("hf-hub:timm/tiny_test_vit", "timm/tiny_test_vit"):
        model = vitkit.load(name)
        rec = model.vitkit_arch
        assert rec["name"] == "vit_tiny_patch16_224" and rec["hub"] == "hf-hub:timm/tiny_test_vit"
        assert model.num_classes == 7 and model.embed_dim == 48
        again = build_arch(rec["name"], rec["kwargs"])
        assert {k: v.shape for k, v in again.state_dict().items()} == {
            k: v.shape for k, v in model.state_dict().items()
        }
        assert tuple(again.pretrained_cfg["mean"]) == (0.1, 0.2, 0.3)


def test_slash_name_that_is_neither_path_nor_hub():
    with pytest.raises(ConfigError, match="not a file or folder; for a Hugging Face Hub model use hf-hub:org/name"):
        vitkit.load("google/vit-base-patch16-224")


@pytest.mark.parametrize("case", ["dinov2", "vit_cls", "deit_teacher"])
def test_img_size_resamples_pos_embed_like_transformers(tmp_path, case):
    hf = make_hf(case)
    hf.save_pretrained(tmp_path / "hf")
    model = vitkit.load(tmp_path / "hf", img_size=48)
    assert model.vitkit_arch["kwargs"]["img_size"] == [48, 48]
    assert tuple(model.pretrained_cfg["input_size"]) == (3, 48, 48)
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        if case == "dinov2":  # DINOv2 always interpolates
            ref = hf(pixel_values=x).last_hidden_state[:, 0]
        else:
            ref = hf(pixel_values=x, interpolate_pos_encoding=True).logits
        assert (model(x) - ref).abs().max().item() <= 1e-5


def test_folder_refuses_other_kwargs(vit_folder):
    with pytest.raises(ConfigError, match=r"cannot be changed at load; only img_size= is accepted"):
        vitkit.load(vit_folder[1], num_classes=3)


@pytest.mark.parametrize("case", ["vit_cls", "deit_teacher", "dinov2", "dinov2_swiglu"])
def test_in_memory_key_names_are_read_too(tmp_path, case):
    """A folder whose weights were written from transformers-5 ``model.state_dict()`` (q_proj/o_proj/layers.N)."""
    from safetensors.torch import save_file

    hf = make_hf(case)
    hf.save_pretrained(tmp_path / "hf")
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(tmp_path / "hf" / "model.safetensors"))
    assert _close(vitkit.load(tmp_path / "hf"), hf) <= 1e-5
