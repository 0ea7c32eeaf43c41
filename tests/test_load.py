"""vitkit.load on every kind of input, and a clear one-line error for each kind of bad one."""

import pytest
import torch
from safetensors.torch import save_file

import vitkit
from vitkit import CheckpointError, ConfigError

from .conftest import TINY_BASE, make_tiny

ARCH = {"name": "vit_tiny_patch16_224", "kwargs": TINY_BASE}


def test_timm_name_random_init():
    model = vitkit.load("vit_tiny_patch16_224", **TINY_BASE)
    assert model.vitkit_arch == {"name": "vit_tiny_patch16_224", "kwargs": TINY_BASE}
    assert not model.training


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ConfigError, match="unknown model 'deit_smal_patch16_224'.*did you mean deit_small_patch16_224"):
        vitkit.load("deit_smal_patch16_224")


def test_pretrained_offline_says_pass_a_local_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="pass a local checkpoint"):
        vitkit.load("test_vit", pretrained=True)


def test_safetensors_with_arch(tmp_path, images):
    model = make_tiny()
    path = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(path))
    loaded = vitkit.load(path, arch=ARCH)
    torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)


def test_pth_state_dict_and_nested(tmp_path, images):
    model = make_tiny()
    torch.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "ckpt.pth")
    loaded = vitkit.load(tmp_path / "ckpt.pth", arch=ARCH)
    torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)


def test_checkpoint_needs_arch(tmp_path):
    model = make_tiny()
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(ConfigError, match="needs arch="):
        vitkit.load(tmp_path / "w.safetensors")


def test_file_not_found(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        vitkit.load(tmp_path / "missing.safetensors", arch=ARCH)


@pytest.mark.parametrize("cut", [0, 7, 200, -100])
def test_corrupt_or_truncated_safetensors(tmp_path, cut):
    model = make_tiny()
    good = tmp_path / "good.safetensors"
    save_file(model.state_dict(), str(good))
    data = good.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[:cut] if cut else b"")
    with pytest.raises(CheckpointError, match="corrupt or truncated|is empty"):
        vitkit.load(bad, arch=ARCH)
    assert good.read_bytes() == data  # inputs never modified


def test_mismatched_state_dict_names_keys(tmp_path):
    model = make_tiny(num_classes=7)
    path = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(path))
    with pytest.raises(CheckpointError, match=r"shape mismatch \['head.weight \(7, 48\) vs \(10, 48\)'"):
        vitkit.load(path, arch=ARCH)
    other = {k: v for k, v in model.state_dict().items() if not k.startswith("head")}
    other["extra.weight"] = torch.zeros(1)
    save_file(other, str(path))
    with pytest.raises(CheckpointError, match=r"missing \['head.weight', 'head.bias'\].*unexpected \['extra.weight'\]"):
        vitkit.load(path, arch={"name": "vit_tiny_patch16_224", "kwargs": dict(TINY_BASE, num_classes=7)})


class _Opaque:
    def __init__(self):
        self.w = torch.ones(2)


def test_pickle_only_checkpoint_is_refused(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"obj": _Opaque()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True refuses"):
        vitkit.load(path, arch=ARCH)


def test_bad_arch_argument(tmp_path):
    save_file(make_tiny().state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(ConfigError, match="arch has unknown keys"):
        vitkit.load(tmp_path / "w.safetensors", arch={"name": "x", "kw": {}})
