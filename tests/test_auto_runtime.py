"""``runtime: auto``: candidates left out on the GEMM probe, the fastest within budget chosen, cached, and the
no-candidate error — with the probe and the timer faked so that the *choice logic* is checked for the machines
seen (an AVX2-only Zen 3 and an AVX-512/VNNI/BF16 Zen 5); the real measurements live in benchmarks/hardware.py."""

from __future__ import annotations

import json

import pytest
import torch

from vitkit.deploy import auto, deploy
from vitkit.deploy.auto import NoRuntimeInBudget, choose_runtime
from vitkit.errors import ConfigError

from .conftest import make_tiny

pytest.importorskip("onnxruntime")

#: GEMM probes (GOP/s, 512³, 2 threads) as measured on the two machine kinds (BENCHMARKS.md "hardware")
AVX2 = {"fp32": 120.0, "bf16": 35.0, "int8": 6.0}
AVX512_BF16 = {"fp32": 228.7, "bf16": 958.2, "int8": 1565.5}
#: seconds per batch by candidate, shaped like the measured ratios on each machine
AVX2_TIMES = {"torch-fp32": 1.0, "torch-compile": 0.95, "ort-fp32": 0.55, "ort-int8": 0.34, "ort-qdq": 0.5}
ZEN5_TIMES = {
    "torch-fp32": 1.0,
    "torch-bf16": 0.33,
    "torch-w8a8": 0.28,
    "torch-w8a8-bf16": 0.21,
    "torch-w8a8-onednn": 0.19,
    "ort-fp32": 0.55,
    "ort-int8": 0.25,
}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv(auto.CACHE_ENV, str(tmp_path / "cache"))


def _fake_timer(monkeypatch, table):
    def fake(models, x, repeats=5, warmup=2, min_time=0.0):
        return [[table[m.auto_candidate]] * repeats for m in models]

    monkeypatch.setattr(auto, "interleaved_times", fake)


def _data(n=16):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def _builder(model, calls=None):
    images, _ = _data()

    def build(runtime, where):
        if calls is not None:
            calls.append(runtime)
        return deploy(model, where, runtime=runtime, calib=images[:8], example=images[:2])

    return build


def test_avx2_probe_leaves_out_bf16_and_int_mm_and_picks_ort_int8(monkeypatch):
    _fake_timer(monkeypatch, AVX2_TIMES)
    m = make_tiny("vit")
    images, labels = _data()
    choice, _ = choose_runtime(m, _builder(m), images, labels, max_drop=100.0, probe=AVX2)
    skipped = {c.runtime: c.note for c in choice.candidates if c.status == "skipped"}
    assert set(skipped) >= {"torch-bf16", "torch-w8a8", "torch-w8a8-bf16", "torch-w8a8-onednn"}
    assert "bf16 GEMM 35.0 vs fp32 120.0" in skipped["torch-bf16"]
    assert "int8 GEMM 6.0" in skipped["torch-w8a8"]
    assert choice.chosen == "ort-int8"
    assert "ort-int8" in choice.reason and "×2.94" in choice.reason


def test_avx512_bf16_probe_measures_every_path_and_picks_the_fastest(monkeypatch):
    _fake_timer(monkeypatch, ZEN5_TIMES)
    monkeypatch.setattr(torch, "compile", lambda m, **kw: m)  # the choice logic, not Inductor, is under test
    m = make_tiny("vit")
    images, labels = _data()
    choice, runners = choose_runtime(m, _builder(m), images, labels, max_drop=100.0, probe=AVX512_BF16)
    measured = {c.runtime for c in choice.candidates if c.status == "measured"}
    assert measured == set(ZEN5_TIMES)
    assert choice.chosen == "torch-w8a8-onednn"
    assert {c.runtime: c.speedup for c in choice.candidates}["torch-w8a8-bf16"] == pytest.approx(1 / 0.21, rel=1e-3)
    assert "| torch-w8a8-onednn **chosen** |" in choice.markdown()


def test_budget_excludes_faster_candidates_and_reason_names_them(monkeypatch):
    _fake_timer(monkeypatch, AVX2_TIMES)
    real_score = auto._score

    def score(runner, images, labels, ref, batch):
        top1, agree = real_score(runner, images, labels, ref, batch)
        return (top1 - 0.5, agree) if runner.auto_candidate == "ort-int8" else (top1, agree)

    monkeypatch.setattr(auto, "_score", score)
    m = make_tiny("vit")
    images, labels = _data()
    choice, _ = choose_runtime(m, _builder(m), images, labels, max_drop=1.0, probe=AVX2, cache=False)
    assert choice.chosen == "ort-fp32"
    assert "faster but over budget: ort-int8" in choice.reason


def test_second_choice_comes_from_the_cache_and_builds_only_the_winner(monkeypatch):
    _fake_timer(monkeypatch, AVX2_TIMES)
    m = make_tiny("vit")
    images, labels = _data()
    first, _ = choose_runtime(m, _builder(m), images, labels, max_drop=100.0, probe=AVX2)
    calls: list[str] = []
    again, runners = choose_runtime(m, _builder(m, calls), images, labels, max_drop=100.0, probe=AVX2)
    assert again.cached and again.chosen == first.chosen and calls == [first.chosen]
    other = make_tiny("vit", seed=1)  # another model: measured again
    calls.clear()
    choose_runtime(other, _builder(other, calls), images, labels, max_drop=100.0, probe=AVX2)
    assert len(calls) > 1


def test_no_candidate_in_budget_names_the_closest_and_writes_nothing(monkeypatch, tmp_path):
    _fake_timer(monkeypatch, AVX2_TIMES)
    monkeypatch.setattr(auto, "_score", lambda runner, images, labels, ref, batch: (0.0, 0.0))
    monkeypatch.setattr(auto, "gemm_probe", lambda: AVX2)
    m = make_tiny("vit")
    out = tmp_path / "deployed"
    with pytest.raises(NoRuntimeInBudget, match="no candidate keeps the top-1 drop within 1 pt") as err:
        deploy(m, out, runtime="auto", data=_data(), max_drop=1.0)
    assert not out.exists()
    assert err.value.choice.chosen is None and len(err.value.choice.candidates) >= 3
    assert "| ort-int8 " in err.value.choice.markdown()


def test_deploy_auto_writes_the_winner_and_runtime_json(monkeypatch, tmp_path):
    _fake_timer(monkeypatch, AVX2_TIMES)
    monkeypatch.setattr(auto, "gemm_probe", lambda: AVX2)
    m = make_tiny("vit")
    runner = deploy(m, tmp_path / "out", runtime="auto", data=_data(), max_drop=100.0)
    assert runner.choice.chosen == "ort-int8"
    assert (tmp_path / "out" / "model.int8.onnx").exists()
    saved = json.loads((tmp_path / "out" / "runtime.json").read_text())
    assert saved["chosen"] == "ort-int8" and saved["machine"]["gemm_gops"] == AVX2
    with torch.no_grad():
        assert runner(_data()[0][:2]).shape == (2, 10)


def test_bad_input():
    m = make_tiny("vit")
    with pytest.raises(ConfigError, match="evaluation images"):
        deploy(m, None, runtime="auto")
    with pytest.raises(ConfigError, match="unknown auto candidate 'tensorrt'"):
        choose_runtime(m, _builder(m), *_data(), candidates=("tensorrt",), probe=AVX2)


def test_a_candidate_failing_at_its_first_call_is_reported_and_the_rest_go_on(monkeypatch):
    _fake_timer(monkeypatch, AVX2_TIMES)
    m = make_tiny("vit")
    images, labels = _data()

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("Inductor failed to compile\nlong trace")

    def build(runtime, where):
        return Broken() if runtime == "ort-fp32" else _builder(m)(runtime, where)

    choice, runners = choose_runtime(m, build, images, labels, max_drop=100.0, probe=AVX2, cache=False)
    failed = {c.runtime: c.note for c in choice.candidates if c.status == "failed"}
    assert failed == {"ort-fp32": "Inductor failed to compile"} and "ort-fp32" not in runners
    assert choice.chosen == "ort-int8"


def test_cache_key_follows_step_configs_and_reduced_precision():
    import vitkit
    from vitkit.models import model_fingerprint
    from vitkit.quant import PrecisionConfig
    from vitkit.tokens import ToMeConfig

    a, b = make_tiny("vit"), make_tiny("vit")
    vitkit.apply_(a, ToMeConfig(r=2))
    vitkit.apply_(b, ToMeConfig(r=3))  # same tensors, another model
    assert model_fingerprint(a) != model_fingerprint(b)
    half = make_tiny("vit")
    vitkit.apply_(half, PrecisionConfig(require_native=False))
    assert len(model_fingerprint(half)) == 16  # bf16 tensors hash too
