"""The real evaluator on a tiny model: fake-quant PyTorch and ORT int8 candidates measure and size correctly."""

import pytest
import torch

from vitkit.data import calibration_set, load_dataset
from vitkit.search.evaluate import RecipeEvaluator
from vitkit.search.space import Candidate, Fidelity

from ..conftest import make_tiny


@pytest.mark.slow  # ONNX export + ORT quantization
def test_ptq_and_ort_int8_candidates():
    torch.set_num_threads(1)
    base = make_tiny()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    val = load_dataset("digits", "val", model=base)
    calib = calibration_set(load_dataset("digits", "train", model=base), 8)
    ev = RecipeEvaluator(base, val, calib, "digits", objective="size", batch_size=4)
    fid = Fidelity(20, 1)
    ptq = ev(Candidate(({"ptq": {"w_bits": 4, "a_bits": 8, "calib_images": 8}},), "torch"), fid)
    tome = ev(Candidate(({"tome": {"r": 2}},), "torch"), fid)
    int8 = ev(Candidate(({"tome": {"r": 2}},), "ort_int8"), fid)
    for m in (ptq, tome, int8):
        assert m["images"] == 20 and 0 <= m["top1"] <= 1 and m["speedup"] > 0
    assert ptq["size_bytes"] < tome["size_bytes"] / 3  # packed 4-bit weights vs fp32 safetensors
    assert int8["size_bytes"] < 0.75 * tome["size_bytes"]  # int8 MatMuls in the ONNX file (tiny: little else)
    assert int8["agreement"] >= 0.8
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # the original is untouched


@pytest.mark.slow  # ONNX export + ORT quantization of each auto candidate
def test_auto_deploy_candidate_picks_a_measured_runtime(tmp_path, monkeypatch):
    from vitkit.deploy import auto

    monkeypatch.setenv(auto.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(auto, "DEFAULT_CANDIDATES", ("torch-fp32", "torch-bf16", "ort-int8"))
    torch.set_num_threads(1)
    base = make_tiny()
    val = load_dataset("digits", "val", model=base)
    calib = calibration_set(load_dataset("digits", "train", model=base), 8)
    ev = RecipeEvaluator(base, val, calib, "digits", objective="speed", batch_size=4)
    m = ev(Candidate(({"tome": {"r": 2}},), "auto"), Fidelity(20, 1))
    _, runner, _, _ = ev.build(Candidate(({"tome": {"r": 2}},), "auto"))
    assert runner.choice.chosen in ("torch-fp32", "torch-bf16", "ort-int8") and m["speedup"] > 0
