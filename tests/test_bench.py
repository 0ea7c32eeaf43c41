import math

import pytest
import torch

import vitkit
from vitkit.bench import count_macs
from vitkit.data import load_dataset

from .conftest import make_tiny


def _expected_macs(model) -> int:
    """Hand count for a plain ViT: patch conv + per block (qkv, attention, proj, MLP) + head."""
    info = vitkit.adapters.describe(model)
    d, n, p = info.embed_dim, info.num_tokens, info.patch_size[0]
    hidden = info.mlp_hidden[0]
    patch = info.num_patches * d * info.in_chans * p * p
    per_block = n * d * 3 * d + 2 * n * n * d + n * d * d + 2 * n * d * hidden
    return patch + info.depth * per_block + d * info.num_classes


@pytest.mark.parametrize("variant", ["vit", "distilled", "registers"])
def test_macs_count_attention_analytically(variant):
    model = make_tiny(variant)
    expected = _expected_macs(model) + (48 * 10 if variant == "distilled" else 0)  # head_dist
    assert count_macs(model, torch.randn(1, 3, 32, 32)) == expected


def test_deit_small_macs_match_published():
    import timm

    macs = count_macs(timm.create_model("deit_small_patch16_224"), torch.randn(1, 3, 224, 224))
    assert abs(2 * macs / 1e9 - 9.198) < 0.01  # 9.198 GFLOPs (platform notes)


def test_benchmark_against_itself():
    model = make_tiny()
    data = load_dataset("digits", "test", model=model)
    res = vitkit.benchmark(model, data, baseline=make_tiny(), batch_sizes=(1, 4), repeats=2, latency_runs=3)
    base, cand = res.variants
    assert base.name == "baseline" and cand.agreement == 1.0 and cand.kl == pytest.approx(0.0, abs=1e-7)
    assert cand.top1 == base.top1 and 0 <= cand.top1 <= 1 and cand.top5 >= cand.top1
    for row in (base, cand):
        assert row.throughput > 0 and set(row.throughput_by_batch) == {1, 4}
        assert 0 < row.latency_p50_ms <= row.latency_p90_ms
        assert row.params == sum(p.numel() for p in model.parameters())
        assert row.file_bytes > 4 * row.params and row.macs > 0
        assert row.peak_mem_mb is None or row.peak_mem_mb > 0
    assert math.isfinite(cand.speedup) and res.env["threads"] == 2 and "torch" in res.env and "cpu" in res.env
    d = res.to_dict()
    assert {
        "name",
        "top1",
        "agreement",
        "throughput",
        "latency_p50_ms",
        "latency_p90_ms",
        "peak_mem_mb",
        "params",
        "file_bytes",
        "macs",
    } <= set(d["variants"][1])


def test_timing_only_without_data():
    res = vitkit.benchmark(make_tiny(), batch_sizes=(2,), repeats=1, latency_runs=0)
    assert res.variants[0].top1 is None and res.variants[0].throughput > 0


def test_nan_weights_refused_naming_the_tensor():
    model = make_tiny()
    with torch.no_grad():
        model.blocks[1].mlp.fc1.weight[0, 0] = float("nan")
    with pytest.raises(vitkit.NumericsError, match="'blocks.1.mlp.fc1.weight' holds 1 NaN/Inf"):
        vitkit.benchmark(model, batch_sizes=(1,), repeats=1)


def test_environment_records_isa_and_a_gemm_probe_per_dtype():
    from vitkit.bench.env import ISA_FLAGS, cpu_features, environment
    from vitkit.bench.record import env_lines

    zen3 = "processor : 0\nflags : fpu sse2 avx avx2 fma bmi2 sha_ni\n"
    zen5 = "flags : avx2 fma avx512f avx512_vnni avx512_bf16 avx_vnni avx512vl\n"
    assert cpu_features(zen3) == ["avx2", "fma"]
    assert cpu_features(zen5) == ["avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16"]
    assert cpu_features("") == []
    env = environment()
    assert set(env["isa"].split()) <= set(ISA_FLAGS) | {"unknown"}
    probe = env["gemm_gops_512"]
    assert set(probe) == {"fp32", "bf16", "int8"} and probe["fp32"] > 0
    assert all(v is None or v > 0 for v in probe.values())
    text = env_lines(env)
    assert "- isa: " in text and "- gemm_gops_512: fp32 " in text and "{" not in text
