"""bf16 as a numerics step: composes with pruning and token reduction, reloads exactly, refuses by measurement."""

import copy

import pytest
import torch

import vitkit
from vitkit.artifact import load_artifact, save_artifact
from vitkit.errors import ConfigError, HardwareError
from vitkit.quant import precision

from ..conftest import make_tiny


def _fast_bf16(monkeypatch, fast: bool):
    probe = {"fp32": 200.0, "bf16": 800.0 if fast else 90.0, "int8": None}
    monkeypatch.setattr(precision, "gemm_probe", lambda: probe)
    monkeypatch.setattr(precision, "cpu_features", lambda: ["avx2", "fma", "avx512_bf16"] if fast else ["avx2", "fma"])


def test_prune_bf16_tome_composes_and_reloads(tmp_path, images, monkeypatch):
    _fast_bf16(monkeypatch, True)
    model = make_tiny("vit")
    with torch.no_grad():
        dense = model(images)
    steps = [vitkit.PruneConfig(ratio=0.3, importance="l1"), vitkit.PrecisionConfig(), vitkit.ToMeConfig(r=2)]
    report = vitkit.apply_(model, steps, calib=images)
    assert report.steps[1].decisions["native"] and report.steps[1].decisions["gemm_gops"]["bf16"] == 800.0
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    with torch.no_grad():
        out = model(images)
    assert out.dtype == torch.float32 and out.shape == dense.shape
    save_artifact(model, None, None, tmp_path / "a")
    loaded = load_artifact(tmp_path / "a")
    assert [s.name for s in loaded.vitkit_steps] == ["prune", "precision", "tome"]
    with torch.no_grad():
        assert torch.equal(loaded(images), out)


def test_bf16_stays_close_to_fp32(images, monkeypatch):
    _fast_bf16(monkeypatch, True)
    model = make_tiny("vit")
    ref = copy.deepcopy(model)
    vitkit.apply_(model, vitkit.PrecisionConfig())
    with torch.no_grad():
        a, b = ref(images), model(images)
    assert float((a - b).norm() / a.norm()) < 0.05  # bf16 keeps 8 mantissa bits: ~1 % logit error


def test_refused_where_bf16_is_not_faster(images, monkeypatch):
    _fast_bf16(monkeypatch, False)
    model = make_tiny("vit")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(HardwareError, match=r"bf16 is not faster than fp32 on this machine \(GEMM bf16 90.0 vs fp32"):
        vitkit.apply_(model, vitkit.PrecisionConfig())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing changed
    vitkit.apply_(model, vitkit.PrecisionConfig(require_native=False))  # the user's explicit choice
    assert next(model.parameters()).dtype == torch.bfloat16


def test_refuses_fake_quant_and_early_exit(images, monkeypatch):
    _fast_bf16(monkeypatch, True)
    quantized = make_tiny("vit")
    vitkit.apply_(quantized, vitkit.PTQConfig(calib_images=4), calib=images)
    with pytest.raises(ConfigError, match="one numerics step"):
        vitkit.apply_(quantized, vitkit.PrecisionConfig())
    model = make_tiny("vit")
    with pytest.raises(ConfigError, match="early exit on a reduced-precision"):
        vitkit.apply_(model, [vitkit.PrecisionConfig(), vitkit.EarlyExitConfig(exits=[0], train={"epochs": 0})])
    with pytest.raises(ConfigError, match="PrecisionConfig.dtype must be one of"):
        vitkit.PrecisionConfig(dtype="fp8")
