"""``export_hf`` / ``vitkit export --format hf``: transformers folders that reproduce the vitkit model's logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import vitkit
from tests.conftest import make_tiny
from vitkit.errors import ConfigError, UnsupportedModelError
from vitkit.interop.hf_export import CONFIG, EXPORT_KEY, RUNTIME_KEY, export_hf

transformers = pytest.importorskip("transformers", reason="vitkit[hf] extra not installed")

X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _hf_logits(folder: Path, x: torch.Tensor = X) -> torch.Tensor:
    model = transformers.AutoModelForImageClassification.from_pretrained(str(folder)).eval()
    with torch.inference_mode():
        return model(pixel_values=x).logits


def _logits(model: torch.nn.Module, x: torch.Tensor = X) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval()(x)


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert (a - b).abs().max().item() < 1e-5


def _tiny_hf_vit(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=96,
        num_labels=10,
        id2label={i: f"digit{i}" for i in range(10)},
        label2id={f"digit{i}": i for i in range(10)},
    )
    model = transformers.ViTForImageClassification(cfg).eval()
    with torch.no_grad():  # random init leaves tiny logits; spread them so the comparison sees real values
        model.classifier.weight.normal_(0, 1.0)
        for name, p in model.named_parameters():
            if "layernorm" in name:
                p.add_(0.05 * torch.randn_like(p))
    src = tmp_path / "hf_src"
    model.save_pretrained(src)
    return src, model


def test_hf_to_vitkit_to_hf_reproduces_logits(tmp_path):
    src, hf_model = _tiny_hf_vit(tmp_path)
    model = vitkit.load(src)
    out = export_hf(model, tmp_path / "out")
    with torch.inference_mode():
        expected = hf_model(pixel_values=X).logits
    _close(_hf_logits(out), expected)
    _close(_logits(model), expected)
    config = json.loads((out / CONFIG).read_text())
    assert config["id2label"]["3"] == "digit3"  # the source folder's config is kept
    assert config[EXPORT_KEY]["checks"]["parity"]["status"] == "passed"
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "- vitkit" in card


def test_timm_native_model_exports(tmp_path):
    model = make_tiny("vit")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = export_hf(model, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    _close(_hf_logits(out), _logits(model))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input untouched
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging dir left behind


def test_lora_model_exports_folded(tmp_path):
    model = make_tiny("vit")
    vitkit.apply_(model, vitkit.LoRAConfig(rank=2))
    from vitkit.adapt.lora import lora_modules

    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.normal_(0, 0.5)
    out = export_hf(model, tmp_path / "out")
    _close(_hf_logits(out), _logits(model))
    assert lora_modules(model)  # the input keeps its LoRA layers
    assert "LoRA folded" in json.loads((out / CONFIG).read_text())[EXPORT_KEY]["checks"]["structure"]


def test_uniformly_pruned_model_exports(tmp_path):
    model = make_tiny("vit")
    vitkit.apply_(model, vitkit.PruneConfig(ratio=0.3, importance="l1", allocation="uniform", groups=("mlp",)))
    hidden = model.blocks[0].mlp.fc1.out_features
    assert hidden < 192 and all(b.mlp.fc1.out_features == hidden for b in model.blocks)
    out = export_hf(model, tmp_path / "out")
    config = json.loads((out / CONFIG).read_text())
    assert config["intermediate_size"] == hidden and config["num_hidden_layers"] == 3
    _close(_hf_logits(out), _logits(model))


def test_uniformly_head_pruned_model_exports(tmp_path):
    model = make_tiny("vit")
    vitkit.apply_(model, vitkit.PruneConfig(ratio=0.34, importance="l1", allocation="uniform", target="params"))
    out = export_hf(model, tmp_path / "out")
    config = json.loads((out / CONFIG).read_text())
    assert config["num_attention_heads"] == 2 and config["head_dim"] == 16
    assert config["intermediate_size"] == model.blocks[0].mlp.fc1.out_features
    _close(_hf_logits(out), _logits(model))
    back = vitkit.load(out)  # heads × head_dim < hidden_size: vitkit's timm ViT with a free head width
    assert back.vitkit_arch["kwargs"]["attn_head_dim"] == 16
    _close(_logits(back), _logits(model))


def test_per_layer_pruned_model_refuses(tmp_path):
    model = make_tiny("vit")
    vitkit.apply_(model, vitkit.PruneConfig(ratio=0.4, importance="l1", allocation="global", target="params"))
    with pytest.raises(UnsupportedModelError, match=r"one width for all layers.*per-layer widths \[num_heads"):
        export_hf(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_quantized_model_refuses(tmp_path):
    model = make_tiny("vit")
    vitkit.apply_(model, vitkit.PTQConfig(calib_images=4), calib=torch.randn(4, 3, 32, 32))
    with pytest.raises(UnsupportedModelError, match="--format onnx --quant qdq"):
        export_hf(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        (vitkit.AdapterConfig(bottleneck=8), "AdaptFormer adapters, which transformers"),
        (vitkit.PromptConfig(num_tokens=2), "visual prompts .VPT., which transformers"),
    ],
)
def test_unfoldable_adapters_refuse(tmp_path, cfg, match):
    model = make_tiny("vit")
    vitkit.apply_(model, cfg)
    with pytest.raises(UnsupportedModelError, match=match + ".*use --format onnx or keep the vitkit artifact"):
        export_hf(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bf16_model_exports_its_values_in_float32(tmp_path):
    model = make_tiny("vit")
    vitkit.apply_(model, vitkit.PrecisionConfig(dtype="bf16", require_native=False))
    out = export_hf(model, tmp_path / "out")
    hf = transformers.AutoModelForImageClassification.from_pretrained(str(out))
    assert hf.classifier.weight.dtype == torch.float32
    assert torch.equal(hf.classifier.weight, model.head.weight.float())  # bf16 values, exactly
    assert next(model.parameters()).dtype == torch.bfloat16  # the input is untouched


def test_tome_model_exports_dense_with_runtime_flag(tmp_path):
    model = make_tiny("vit")
    dense = _logits(model)
    vitkit.apply_(model, vitkit.ToMeConfig(r=2))
    assert not torch.allclose(_logits(model), dense, atol=1e-5)  # ToMe changes the outputs at runtime
    out = export_hf(model, tmp_path / "out")
    _close(_hf_logits(out), dense)  # transformers runs the dense model
    config = json.loads((out / CONFIG).read_text())
    assert [r["name"] for r in config[RUNTIME_KEY]] == ["tome"]
    assert config[RUNTIME_KEY][0]["config"]["r"] == 2
    card = (out / "README.md").read_text()
    assert "transformers runs it dense" in card and "`vitkit.load(folder)` re-applies it" in card and "- tome" in card
    assert vitkit.tokens.patch.patched_method(model) is not None  # the input stays patched


def test_card_contains_the_report_table(tmp_path):
    from vitkit.report import markdown_table

    variants = [
        {"name": "baseline", "top1": 0.91, "agreement": 1.0, "throughput": 100.0, "params": 1e6},
        {"name": "tome", "top1": 0.90, "agreement": 0.97, "throughput": 150.0, "speedup": 1.5, "params": 1e6},
    ]
    report = {"variants": variants, "env": {"torch": torch.__version__, "threads": 2}}
    out = export_hf(make_tiny("vit"), tmp_path / "out", report=report)
    card = (out / "README.md").read_text()
    assert markdown_table(variants) in card
    assert "## Evaluation (vitkit report)" in card and f"- torch: {torch.__version__}" in card


def test_existing_folder_is_refused_untouched_and_exports_replace(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a vitkit transformers export"):
        export_hf(make_tiny("vit"), target)
    assert [p.name for p in target.iterdir()] == ["notes.txt"] and (target / "notes.txt").read_text() == "keep me"
    out = export_hf(make_tiny("vit", seed=0), tmp_path / "out")
    export_hf(make_tiny("vit", seed=1), out)  # an earlier export is replaced
    _close(_hf_logits(out), _logits(make_tiny("vit", seed=1)))


def test_cli_export_hf(tmp_path, capsys):
    from vitkit.artifact import save_artifact
    from vitkit.cli.main import main

    model = make_tiny("vit")
    art = save_artifact(model, None, None, tmp_path / "art")
    out = tmp_path / "out"
    assert main(["export", str(art), "--format", "hf", "-o", str(out)]) == 0
    assert "parity check passed" in capsys.readouterr().out
    _close(_hf_logits(out), _logits(model))
    assert main(["export", str(art), "--format", "hf"]) == 0  # default output <model>-hf
    assert (tmp_path / "art-hf" / CONFIG).is_file()

    capsys.readouterr()
    assert main(["export", str(art), "--format", "tflite", "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: unknown export format --format 'tflite': choose one of onnx, hf"
    assert not (tmp_path / "x").exists()

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "a.txt").write_text("x")
    assert main(["export", str(art), "--format", "hf", "-o", str(tmp_path / "taken")]) == 2


def test_cli_refuses_quantized_artifact(tmp_path, capsys):
    from vitkit.artifact import save_artifact
    from vitkit.cli.main import main

    model = make_tiny("vit")
    vitkit.apply_(model, vitkit.PTQConfig(calib_images=4), calib=torch.randn(4, 3, 32, 32))
    art = save_artifact(model, None, None, tmp_path / "art")
    assert main(["export", str(art), "--format", "hf", "-o", str(tmp_path / "out")]) == 2
    assert "--format onnx --quant qdq" in capsys.readouterr().err


def test_cli_hf_source_artifact_keeps_source_config(tmp_path):
    from vitkit.artifact import save_artifact
    from vitkit.cli.main import main

    src, hf_model = _tiny_hf_vit(tmp_path)
    model = vitkit.load(src)
    vitkit.apply_(model, vitkit.ToMeConfig(r=1))
    art = save_artifact(model, None, None, tmp_path / "art")
    out = tmp_path / "out"
    assert main(["export", str(art), "--format", "hf", "-o", str(out)]) == 0
    config = json.loads((out / CONFIG).read_text())
    assert config["id2label"]["3"] == "digit3" and config[RUNTIME_KEY][0]["name"] == "tome"
    with torch.inference_mode():
        _close(_hf_logits(out), hf_model(pixel_values=X).logits)


def test_loading_an_export_reapplies_its_runtime_step(tmp_path):
    model = make_tiny("vit")
    vitkit.apply_(model, vitkit.ToMeConfig(r=2))
    out = export_hf(model, tmp_path / "out")
    again = vitkit.load(out)
    assert [s.name for s in vitkit.history.step_history(again)] == ["tome"]
    _close(_logits(again), _logits(model))  # ToMe is back: the vitkit outputs, not the dense ones
    export_hf(again, out)  # re-export: the flag is written once, from the step history
    config = json.loads((out / CONFIG).read_text())
    assert [r["name"] for r in config[RUNTIME_KEY]] == ["tome"]
    _close(_hf_logits(out), _logits(make_tiny("vit")))


@pytest.mark.parametrize("init", ["lora", "pissa"])
def test_export_peft_hf_naming_loads_with_peft(tmp_path, init):
    peft = pytest.importorskip("peft", reason="peft not installed")
    from vitkit.adapt.lora import lora_modules
    from vitkit.interop import export_peft

    src, _ = _tiny_hf_vit(tmp_path)
    model = vitkit.load(src)
    vitkit.apply_(model, vitkit.LoRAConfig(rank=2, init=init, train_also=("head.*",)))
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.add_(0.3 * torch.randn_like(m.lora_B))
        model.head.weight.add_(0.5)  # a retrained head travels as modules_to_save
    out = export_peft(model, tmp_path / "adapter", naming="hf")
    config = json.loads((out / "adapter_config.json").read_text())
    assert "vit.layers.0.attention.q_proj" in config["target_modules"]
    assert not any("qkv" in t for t in config["target_modules"]) and config["modules_to_save"] == ["classifier"]
    base = transformers.AutoModelForImageClassification.from_pretrained(str(src))
    wrapped = peft.PeftModel.from_pretrained(base, str(out)).eval()
    with torch.inference_mode():
        _close(wrapped(pixel_values=X).logits, _logits(model))
    with pytest.raises(ConfigError, match="naming must be 'timm' or 'hf'"):
        export_peft(model, tmp_path / "bad", naming="onnx")
