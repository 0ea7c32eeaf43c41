"""Converters of torchvision ``VisionTransformer`` and lucidrains ``vit_pytorch.ViT`` state dicts into exact timm
models (:mod:`vitkit.models.convert`), and ``vitkit convert``: logits equal on real MNIST images, YAML-plain arch
records, vitkit's methods on the result, layout detection errors, inputs untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml
from safetensors.torch import save_file

import vitkit
from vitkit.adapters import adapter_for
from vitkit.data import load_dataset
from vitkit.data.core import InputSpec
from vitkit.errors import CheckpointError, ConfigError, UnsupportedModelError
from vitkit.models import build_arch, load_state_dict_strict
from vitkit.models.convert import convert_state, detect, load_converted
from vitkit.models.load import read_state_dict

from ._lucidrains_ref import ViT as LucidViT

torchvision = pytest.importorskip("torchvision")

SPEC = InputSpec(3, 32, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
ATOL = 1e-5


@pytest.fixture(scope="module")
def mnist():
    """Real MNIST-5k images at 3×32×32: a small training slice and test images."""
    train = load_dataset("mnist5k", "train", spec=SPEC)
    test = load_dataset("mnist5k", "test", spec=SPEC)
    xs, ys = zip(*(train[i] for i in range(640)), strict=True)
    xt = torch.stack([test[i][0] for i in range(128)])
    return torch.stack(xs), torch.as_tensor(ys), xt


def _train(model: nn.Module, mnist, steps: int = 10) -> nn.Module:
    """A few AdamW steps on real MNIST batches (a full epoch costs more than the test budget): trained, not init,
    weights."""
    xs, ys, _ = mnist
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for i in range(steps):
        x, y = xs[i * 64 : (i + 1) * 64], ys[i * 64 : (i + 1) * 64]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def _torchvision(**kw) -> nn.Module:
    torch.manual_seed(0)
    args = dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10)
    return torchvision.models.VisionTransformer(**{**args, **kw}).eval()


def _lucid(**kw) -> nn.Module:
    torch.manual_seed(0)
    args = dict(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, heads=2, dim_head=16, mlp_dim=64)
    return LucidViT(**{**args, **kw}).eval()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_same_logits(ref: nn.Module, model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        a, b = ref(x), model(x)
    assert (a - b).abs().max().item() <= ATOL
    assert torch.equal(a.argmax(-1), b.argmax(-1))


def _rebuilt_from_yaml(model: nn.Module) -> nn.Module:
    """Rebuild from the arch record after a YAML round trip: proves every kwarg is YAML-plain."""
    rec = yaml.safe_load(yaml.safe_dump(model.vitkit_arch))
    clone = build_arch(rec["name"], rec["kwargs"])
    load_state_dict_strict(clone, model.state_dict())
    return clone


# -- torchvision ------------------------------------------------------------------------------------------------------
def test_torchvision_trained_converts_exactly(mnist, tmp_path):
    ref = _train(_torchvision(), mnist)
    path = tmp_path / "tv.pth"
    torch.save(ref.state_dict(), path)
    before = _sha(path)
    state = read_state_dict(path)
    model = load_converted(state, "auto", heads=2)
    _assert_same_logits(ref, model, mnist[2])
    _assert_same_logits(ref, _rebuilt_from_yaml(model), mnist[2])
    assert _sha(path) == before
    assert model.vitkit_arch["kwargs"]["num_heads"] == 2


def test_torchvision_named_config_gives_heads():
    with torch.device("meta"):
        state = torchvision.models.vit_l_16().state_dict()
    name, kwargs, _ = convert_state(state, "torchvision")
    assert (kwargs["num_heads"], kwargs["embed_dim"], kwargs["depth"], kwargs["img_size"]) == (16, 1024, 24, 224)


def test_torchvision_unnamed_size_needs_heads():
    with pytest.raises(ConfigError, match="--heads"):
        convert_state(_torchvision().state_dict(), "torchvision")
    with pytest.raises(ConfigError, match="does not take"):
        convert_state(_torchvision().state_dict(), "torchvision", heads=2, dim_head=16)


def test_torchvision_representation_size_refused_by_name():
    with pytest.raises(UnsupportedModelError, match="representation_size"):
        convert_state(_torchvision(representation_size=16).state_dict(), heads=2)


# -- lucidrains -------------------------------------------------------------------------------------------------------
LUCID_VARIANTS = {
    "head_dim_ne_width_over_heads": dict(heads=3, dim_head=24),
    "no_to_out": dict(heads=1, dim_head=32),
    "mean_pool": dict(pool="mean"),
    "relu": dict(act=nn.ReLU, heads=4, dim_head=8),
}


@pytest.mark.parametrize("variant", list(LUCID_VARIANTS))
def test_lucidrains_trained_converts_exactly(variant, mnist):
    kw = dict(LUCID_VARIANTS[variant])
    act = kw.get("act")
    ref = _train(_lucid(**kw), mnist, steps=3)
    if variant == "no_to_out":
        assert not any(".to_out." in k for k in ref.state_dict())
    hints = {"heads": kw.get("heads", 2), "dim_head": kw.get("dim_head", 16)}
    if act is nn.ReLU:
        hints["act"] = "relu"
    state = ref.state_dict()
    copies = {k: v.clone() for k, v in state.items()}
    model = load_converted(state, "auto", **hints)
    _assert_same_logits(ref, model, mnist[2])
    _assert_same_logits(ref, _rebuilt_from_yaml(model), mnist[2])
    assert all(torch.equal(state[k], copies[k]) for k in state)  # the input state dict is untouched


def test_lucidrains_mean_pool_with_cls_token(mnist):
    """Older vit-pytorch kept the cls token with pool='mean' and averaged over it too."""
    ref = _lucid()
    ref.pool = "mean"
    model = load_converted(ref.state_dict(), "lucidrains", heads=2, dim_head=16, pool="mean")
    assert model.pool_include_prefix
    _assert_same_logits(ref, model, mnist[2])


def test_lucidrains_default_dim_head_and_bad_hints():
    state = _lucid(heads=2, dim_head=64).state_dict()
    assert convert_state(state)[1]["num_heads"] == 2  # vit-pytorch's default dim_head=64
    with pytest.raises(ConfigError, match="attention width"):
        convert_state(state, heads=3)
    with pytest.raises(ConfigError, match="act="):
        convert_state(state, act="swish2")


def test_lucidrains_result_is_a_plain_vit_for_methods(mnist):
    """head_dim ≠ width/heads and the pixel LayerNorm stem still go through the adapter and ToMe / PTQ / pruning."""
    x = mnist[2][:16]
    for cfg in (
        vitkit.ToMeConfig(r=2),
        vitkit.PTQConfig(w_bits=8, a_bits=8, calib_images=8),
        vitkit.PruneConfig(ratio=0.3, importance="l1"),
    ):
        model = load_converted(_lucid(heads=3, dim_head=24).state_dict(), heads=3, dim_head=24)
        info = adapter_for(model).describe(model)
        assert info.head_dim == (24, 24) and info.num_heads == (3, 3)
        vitkit.apply_(model, [cfg], calib=mnist[0][:16])
        with torch.no_grad():
            out = model(x)
        assert out.shape == (16, 10) and torch.isfinite(out).all()


# -- detection --------------------------------------------------------------------------------------------------------
def test_detect_layouts_and_closest_layout_errors():
    tv, lr = _torchvision().state_dict(), _lucid().state_dict()
    assert detect(tv) == "torchvision" and detect(lr) == "lucidrains"
    with pytest.raises(CheckpointError, match="looks like torchvision VisionTransformer but lacks encoder.pos_emb"):
        detect({k: v for k, v in tv.items() if k != "encoder.pos_embedding"})
    with pytest.raises(CheckpointError, match="looks like lucidrains .* lacks transformer.norm.weight"):
        detect({k: v for k, v in lr.items() if not k.startswith("transformer.norm.")})
    with pytest.raises(CheckpointError, match="matches no known layout"):
        detect({"foo.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="already a timm"):
        detect(build_arch("vit_tiny_patch16_224", {"img_size": 32, "depth": 1}).state_dict())


def test_lucidrains_old_prenorm_layout_refused_by_name():
    state = {k.replace(".0.to_qkv.", ".0.fn.to_qkv."): v for k, v in _lucid().state_dict().items()}
    with pytest.raises(UnsupportedModelError, match="older vit-pytorch layout"):
        convert_state(state, "lucidrains", heads=2)


def test_extra_keys_refused_not_dropped():
    state = {**_torchvision().state_dict(), "heads.extra.weight": torch.zeros(2)}
    with pytest.raises(CheckpointError, match="heads.extra.weight"):
        convert_state(state, heads=2)


# -- CLI --------------------------------------------------------------------------------------------------------------
def test_cli_convert_to_artifact_then_run_tome_recipe(tmp_path, mnist, capsys):
    from vitkit.cli.main import main

    ref = _torchvision()
    src = tmp_path / "tv.pth"
    torch.save(ref.state_dict(), src)
    before = _sha(src)
    out = tmp_path / "converted"
    assert main(["convert", str(src), "--from", "torchvision", "--heads", "2", "-o", str(out)]) == 0
    assert "arch:" in capsys.readouterr().out
    assert _sha(src) == before
    _assert_same_logits(ref, vitkit.load(out), mnist[2])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {out}\nname: tome\nsteps:\n  - tome: {{r: 2}}\n"
        "eval: {data: mnist5k, split: test, limit: 32}\nbench: {batch_sizes: [1], threads: 1, repeats: 1}\n"
    )
    assert main(["run", str(recipe), "-o", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "report.json").is_file()


def test_cli_convert_lucidrains_safetensors_prints_arch(tmp_path, mnist, capsys):
    from vitkit.cli.main import main

    ref = _lucid(heads=3, dim_head=24, act=nn.ReLU)
    src = tmp_path / "lucid.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(src))
    before = _sha(src)
    dst = tmp_path / "timm.safetensors"
    args = ["convert", str(src), "--heads", "3", "--dim-head", "24", "--act", "relu", "-o", str(dst)]
    assert main(args) == 0
    printed = yaml.safe_load(capsys.readouterr().out.split("\n", 1)[1])
    assert printed["arch"]["name"] == "vitkit_vit" and printed["arch"]["kwargs"]["attn_head_dim"] == 24
    _assert_same_logits(ref, vitkit.load(dst, arch=printed["arch"]), mnist[2])
    art = tmp_path / "art"
    assert main([*args[:-1], str(art)]) == 0
    _assert_same_logits(ref, vitkit.load(art), mnist[2])  # the artifact rebuilds vitkit_vit from its record alone
    assert _sha(src) == before
    assert main(["convert", str(src), "--heads", "3", "-o", str(tmp_path / "x.pth")]) != 0
