"""`vitkit merge merge.yaml -o out/` end to end, and YAML errors."""

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from vitkit.cli import main
from vitkit.errors import ConfigError
from vitkit.merging.yaml_config import parse_merge_dict

from ..conftest import make_tiny


def _write(tmp_path, n=2):
    base = {k: v.detach().clone() for k, v in make_tiny("vit").state_dict().items()}
    save_file(base, str(tmp_path / "base.safetensors"))
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        save_file(
            {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()},
            str(tmp_path / f"m{i}.safetensors"),
        )
    return base


def test_cli_merge_writes_weights_and_resolved_yaml(tmp_path, capsys):
    _write(tmp_path)
    cfg = {
        "merge_method": "ties",
        "base_model": "base.safetensors",
        "models": [{"model": "m0.safetensors"}, "m1.safetensors"],
        "parameters": {"density": 0.5},
        "filter": {"targets": ["blocks.*"]},
    }
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["merge", str(tmp_path / "merge.yaml"), "-o", str(tmp_path / "out")]) == 0
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert "blocks.0.attn.qkv.weight" in out
    resolved = yaml.safe_load((tmp_path / "out" / "merge.resolved.yaml").read_text())
    assert resolved["config"]["density"] == 0.5 and resolved["config"]["aggregate"] == "mean"


def test_cli_merge_artifact_with_arch(tmp_path):
    _write(tmp_path)
    cfg = {
        "merge_method": "average",
        "models": [
            {"model": "m0.safetensors", "parameters": {"weight": 1}},
            {"model": "m1.safetensors", "parameters": {"weight": 3}},
        ],
        "arch": {
            "name": "vit_tiny_patch16_224",
            "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 3, "num_heads": 3, "num_classes": 10},
        },
    }
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["merge", str(tmp_path / "merge.yaml"), "-o", str(tmp_path / "art")]) == 0
    import vitkit

    model = vitkit.load(tmp_path / "art")
    m0, m1 = load_file(str(tmp_path / "m0.safetensors")), load_file(str(tmp_path / "m1.safetensors"))
    assert torch.allclose(model.pos_embed.detach(), 0.25 * m0["pos_embed"] + 0.75 * m1["pos_embed"], atol=1e-6)


def test_unknown_method_lists_valid_ones(tmp_path, capsys):
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump({"merge_method": "tiess", "models": ["x"]}))
    assert main(["merge", str(tmp_path / "merge.yaml"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown merge method 'tiess'" in err and "did you mean ties" in err and "valid methods" in err


def test_yaml_errors(tmp_path):
    _write(tmp_path, 1)
    with pytest.raises(ConfigError, match="unknown key"):
        parse_merge_dict({"merge_method": "ties", "models": ["m0.safetensors"], "lambda": 1}, root=tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        parse_merge_dict({"merge_method": "ties", "models": ["nope.safetensors"]}, root=tmp_path)
    with pytest.raises(ConfigError, match="Python"):
        parse_merge_dict({"merge_method": "regmean", "models": ["m0.safetensors"]}, root=tmp_path)
    with pytest.raises(ConfigError, match="no per-model weight"):
        parse_merge_dict(
            {"merge_method": "ties", "models": [{"model": "m0.safetensors", "parameters": {"weight": 2}}]},
            root=tmp_path,
        )
