"""Custom models and bad input (a user's own ViT): attention subclasses, class-valued kwargs, bad --arch, NaN weights,
missing normalisation, --import / recipe import:, --arch on every loading command, export parity data."""

from __future__ import annotations

import json
import logging
import math
import textwrap

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file
from timm.layers import Attention

import vitkit
from vitkit.adapters import adapter_for
from vitkit.cli.main import main
from vitkit.errors import ConfigError, DataError, UnsupportedModelError

from .conftest import TINY_BASE, make_tiny

TINY_ARCH = json.dumps({"name": "vit_tiny_patch16_224", "kwargs": {**TINY_BASE, "depth": 2}})


class MyAttention(Attention):
    """A user's attention class that keeps timm's forward (own name, maybe own helpers)."""


class ForwardAttention(Attention):
    """A user's attention class with its own forward: vitkit's methods would bypass it."""

    def forward(self, x, attn_mask=None, **kw):  # noqa: D401
        return 2.0 * super().forward(x, attn_mask=attn_mask)


def _with_attention(cls: type, seed: int = 0) -> nn.Module:
    model = make_tiny("vit", seed=seed, depth=2)
    for blk in model.blocks:
        blk.attn.__class__ = cls
    return model


def _methods():
    return [
        vitkit.PTQConfig(w_bits=8, a_bits=8, calib_images=8),
        vitkit.MixedPrecisionConfig(avg_bits=6.0, calib_images=8),
        vitkit.ToMeConfig(r=2),
        vitkit.PruneConfig(ratio=0.2, importance="l1"),
        vitkit.LoRAConfig(rank=2),
    ]


# -- 1: one capability check for attention subclasses -------------------------------------------------------------
@pytest.mark.parametrize("cfg", _methods(), ids=lambda c: type(c).__name__)
def test_attention_subclass_keeping_forward_gets_every_method(cfg, images):
    calib = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    plain, custom = _with_attention(Attention), _with_attention(MyAttention)
    adapter_for(custom).describe(custom)  # the adapter accepts it ...
    vitkit.apply_(plain, [cfg], calib=calib)
    vitkit.apply_(custom, [cfg], calib=calib)  # ... and so does every method
    assert all(isinstance(b.attn, MyAttention) for b in custom.blocks)  # the user's class survives patching
    with torch.no_grad():
        torch.testing.assert_close(custom(images), plain(images), rtol=0, atol=1e-5)


def test_quantized_subclass_strips_back_to_user_class():
    from vitkit.quant.modules import quant_class

    q = quant_class(MyAttention)
    assert q is not None and issubclass(q, MyAttention)
    assert quant_class(ForwardAttention) is None


def test_attention_subclass_with_own_forward_refused_with_one_message():
    calib = torch.randn(8, 3, 32, 32)
    messages = set()
    with pytest.raises(UnsupportedModelError) as exc:
        m = _with_attention(ForwardAttention)
        adapter_for(m).describe(m)
    messages.add(str(exc.value))
    for cfg in _methods():
        with pytest.raises(UnsupportedModelError) as exc:
            vitkit.apply_(_with_attention(ForwardAttention), [cfg], calib=calib)
        messages.add(str(exc.value))
    assert len(messages) == 1, messages
    msg = messages.pop()
    assert "ForwardAttention.forward" in msg and "LoRA" not in msg and "\n" not in msg


# -- 2: class-valued arch kwargs ------------------------------------------------------------------------------------
def test_class_valued_kwarg_refused_at_save_nothing_written(tmp_path):
    model = vitkit.load("vit_tiny_patch16_224", act_layer=nn.ReLU, **{**TINY_BASE, "depth": 1})
    out = tmp_path / "art"
    with pytest.raises(ConfigError, match=r"act_layer=.*act_layer='relu'"):
        vitkit.save_artifact(model, None, None, out)
    assert list(tmp_path.iterdir()) == []  # no artifact, no staging directory


def test_string_kwarg_round_trips(tmp_path, images):
    model = vitkit.load("vit_tiny_patch16_224", act_layer="relu", **{**TINY_BASE, "depth": 1})
    assert isinstance(model.blocks[0].mlp.act, nn.ReLU)
    vitkit.save_artifact(model, None, None, tmp_path / "art")
    back = vitkit.load(tmp_path / "art")
    with torch.no_grad():
        assert torch.equal(back(images), model(images))


# -- 3: bad --arch values --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, why",
    [({"embed_dim": 50, "num_heads": 3}, "divisible"), ({"global_pool": "nonsense"}, "global_pool")],
)
def test_bad_arch_kwargs_are_config_errors(kwargs, why):
    with pytest.raises(ConfigError, match=why) as exc:
        vitkit.load("vit_tiny_patch16_224", **kwargs)
    assert "vit_tiny_patch16_224" in str(exc.value) and "--arch" in str(exc.value)


def test_bad_arch_from_cli_is_one_line(tmp_path, capsys):
    ckpt = tmp_path / "w.safetensors"
    save_file(make_tiny("vit", depth=2).state_dict(), str(ckpt))
    arch = json.dumps({"name": "vit_tiny_patch16_224", "kwargs": {"embed_dim": 50, "num_heads": 3}})
    assert main(["eval", str(ckpt), "--arch", arch, "--data", "digits", "--limit", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot build 'vit_tiny_patch16_224' with embed_dim=50") and "\n" not in err


# -- 4: non-finite weights refused by every loading command ----------------------------------------------------------
@pytest.fixture
def nan_ckpt(tmp_path):
    state = make_tiny("vit", depth=2).state_dict()
    state["blocks.1.mlp.fc1.weight"][0, 0] = math.nan
    path = tmp_path / "nan.safetensors"
    save_file(state, str(path))
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "{ckpt}", "--arch", TINY_ARCH, "--data", "digits", "--limit", "8"],
        ["bench", "{ckpt}", "--arch", TINY_ARCH, "--repeats", "1"],
        ["export", "{ckpt}", "--arch", TINY_ARCH, "-o", "{out}", "--no-bench"],
        ["prune", "{ckpt}", "--arch", TINY_ARCH, "--dry-run", "--importance", "l1"],
        ["deploy", "{ckpt}", "--arch", TINY_ARCH, "-o", "{out}"],
        ["early-exit", "{ckpt}", "--arch", TINY_ARCH, "-o", "{out}", "--epochs", "0"],
    ],
    ids=lambda a: a[0],
)
def test_nan_weights_refused_by_every_command(argv, nan_ckpt, tmp_path, capsys):
    argv = [a.replace("{ckpt}", str(nan_ckpt)).replace("{out}", str(tmp_path / "out")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "'blocks.1.mlp.fc1.weight' holds 1 NaN/Inf" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_nan_weights_refused_by_run(nan_ckpt, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {nan_ckpt}\narch: {TINY_ARCH}\nsteps: []\n")
    assert main(["run", str(recipe), "-o", str(tmp_path / "out")]) == 2
    assert "'blocks.1.mlp.fc1.weight' holds 1 NaN/Inf" in capsys.readouterr().err


# -- 5: input normalisation ------------------------------------------------------------------------------------------
def test_one_channel_mismatch_names_the_fix():
    model = vitkit.load("vit_tiny_patch16_224", in_chans=1, **{**TINY_BASE, "depth": 1})
    with pytest.raises(DataError, match="pretrained_cfg_overlay"):
        vitkit.data.input_spec(model)
    fixed = vitkit.load(
        "vit_tiny_patch16_224",
        in_chans=1,
        pretrained_cfg_overlay={"mean": [0.1307], "std": [0.3081]},
        **{**TINY_BASE, "depth": 1},
    )
    spec = vitkit.data.input_spec(fixed)
    assert spec.chans == 1 and spec.mean == (0.1307,) and spec.std == (0.3081,)


def test_absent_normalisation_is_a_visible_default(caplog):
    model = make_tiny("vit", depth=1)
    model.pretrained_cfg = {k: v for k, v in model.pretrained_cfg.items() if k not in ("mean", "std")}
    with caplog.at_level(logging.WARNING, logger="vitkit.data.core"):
        spec = vitkit.data.input_spec(model)
    assert "records no input normalisation" in caplog.text and "pretrained_cfg_overlay" in caplog.text
    assert str(list(spec.mean)[:1])[1:-1] in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vitkit.data.core"):
        vitkit.data.input_spec(model, mean=(0.5,), std=(0.5,))
    assert caplog.text == ""  # set explicitly: no warning


# -- 6: --import, recipe import:, --arch everywhere ------------------------------------------------------------------
USER_CODE = """
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer


@register_model
def {name}(pretrained=False, **kwargs):
    args = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0, qkv_bias=False,
                act_layer="relu", num_classes=10)
    timm_only = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")
    args.update({{k: v for k, v in kwargs.items() if k not in timm_only}})
    model = VisionTransformer(**args)
    model.pretrained_cfg = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=(3, 32, 32))
    return model
"""


def test_import_py_path_registers_a_model(tmp_path, capsys):
    code = tmp_path / "my_vit.py"
    code.write_text(USER_CODE.format(name="h6_user_vit_a"))
    argv = ["--import", str(code), "eval", "h6_user_vit_a", "--data", "digits", "--limit", "8", "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 8


def test_import_module_name_from_current_dir(tmp_path, monkeypatch, capsys):
    (tmp_path / "h6_user_mod.py").write_text(USER_CODE.format(name="h6_user_vit_b"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    out = tmp_path / "pruned"
    argv = ["--import", "h6_user_mod", "prune", "h6_user_vit_b", "--importance", "l1", "--ratio", "0.2"]
    assert main([*argv, "--data", "digits", "--no-eval", "-o", str(out)]) == 0
    assert vitkit.load(out).blocks[0].attn.num_heads <= 4


def test_failing_import_is_one_line(tmp_path, capsys):
    assert main(["--import", "h6_no_such_module", "list"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'h6_no_such_module' failed: ModuleNotFoundError" in err and "\n" not in err
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    assert main(["--import", str(bad), "list"]) == 2
    assert "RuntimeError: boom" in capsys.readouterr().err


def test_recipe_import_and_artifact_reloads(tmp_path, images):
    sub = tmp_path / "recipes"
    sub.mkdir()
    (sub / "user_models.py").write_text(USER_CODE.format(name="h6_user_vit_c"))
    recipe = sub / "r.yaml"
    recipe.write_text(
        textwrap.dedent(
            """
            import: [user_models.py]
            model: h6_user_vit_c
            steps: [{tome: {r: 1}}]
            eval: {data: digits, limit: 16}
            calib: {data: digits, n: 8}
            bench: {batch_sizes: [1], repeats: 1, latency_runs: 2, per_step: false}
            """
        )
    )
    out = tmp_path / "out"
    assert main(["run", str(recipe), "-o", str(out)]) == 0
    assert vitkit.load(out).vitkit_arch["name"] == "h6_user_vit_c"


def test_arch_on_prune_is_recorded_and_reloads(tmp_path, images):
    model = make_tiny("vit", depth=2)
    ckpt = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(ckpt))
    out = tmp_path / "pruned"
    argv = ["prune", str(ckpt), "--arch", TINY_ARCH, "--importance", "l1", "--ratio", "0.2", "--data", "digits"]
    assert main([*argv, "--no-eval", "-o", str(out)]) == 0
    back = vitkit.load(out)
    assert back.vitkit_arch["kwargs"]["embed_dim"] == TINY_BASE["embed_dim"]


def test_arch_accepts_yaml_flow_and_every_loading_command_has_it():
    from vitkit.cli.main import build_parser
    from vitkit.ui import parse_arch

    assert parse_arch("{name: vit_tiny_patch16_224, kwargs: {act_layer: relu}}") == {
        "name": "vit_tiny_patch16_224",
        "kwargs": {"act_layer": "relu"},
    }
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for cmd in ("prune", "early-exit", "export", "run", "merge", "eval", "bench", "deploy"):
        assert "--arch" in sub[cmd]._option_string_actions, cmd


# -- 7: export parity data -------------------------------------------------------------------------------------------
def test_export_of_api_artifact_uses_report_data_else_says_random(tmp_path, capsys):
    from vitkit.artifact import recorded_eval_data

    model = make_tiny("vit", depth=1)
    with_data = vitkit.save_artifact(model, None, {"settings": {"data": "digits/test"}}, tmp_path / "a")
    assert recorded_eval_data(with_data) == "digits"
    bare = vitkit.save_artifact(model, None, None, tmp_path / "b")
    assert recorded_eval_data(bare) is None
    out = tmp_path / "onnx"
    assert main(["export", str(bare), "-o", str(out), "--images", "4"]) == 0
    assert "parity on random input: pass --data" in capsys.readouterr().out
    assert "parity on random input: pass --data" in (out / "export_report.md").read_text()
    assert json.loads((out / "export_report.json").read_text())["parity_input"] == "random"
