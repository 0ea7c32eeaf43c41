"""The calibrator registry (one file per PTQ method) and the host-adapter layer roles quantization relies on."""

from __future__ import annotations

import pytest
import torch

from vitkit.adapters import adapter_for
from vitkit.adapters.timm_vit_layers import ExplicitAttention
from vitkit.quant import PTQConfig
from vitkit.quant.calibrators import CALIBRATORS, METHODS, calibrator_for
from vitkit.quant.calibrators.repq import RepQCalibrator
from vitkit.quant.ptq import build_plan, quantizable_names

from ..conftest import make_tiny


def test_methods_registered_in_order():
    assert METHODS == ("repq", "dopq", "ptq4vit", "minmax", "percentile")
    assert all(calibrator_for(m).name == m for m in METHODS) and set(CALIBRATORS) == set(METHODS)
    assert isinstance(calibrator_for("dopq"), RepQCalibrator) and calibrator_for("dopq").reduce == "median"
    assert calibrator_for("ptq4vit").softmax == calibrator_for("ptq4vit").post_gelu == "twin"


def test_linear_roles_and_pairs():
    model = make_tiny("distilled")
    host = adapter_for(model)
    roles = host.linear_roles(model)
    modules = dict(model.named_modules())
    assert all(isinstance(modules[n], torch.nn.Linear) for n in roles)
    by_block = [[r.role for r in roles.values() if r.block == i] for i in range(3)]
    assert by_block == [["qkv", "attn_out", "mlp_in", "mlp_out"]] * 3
    heads = {n: r for n, r in roles.items() if r.role == "head"}
    assert list(heads) == ["head", "head_dist"] and all(r.block is None for r in heads.values())
    assert roles["blocks.1.mlp.fc2"].family == "fc2"
    pairs = host.norm_linear_pairs(model)
    assert [(p.norm, p.linears, p.role) for p in pairs[:2]] == [
        ("blocks.0.norm1", ("blocks.0.attn.qkv",), "attn"),
        ("blocks.0.norm2", ("blocks.0.mlp.fc1",), "mlp"),
    ]
    assert all(isinstance(modules[p.norm], torch.nn.LayerNorm) for p in pairs)
    cores = host.attention_cores(model)
    assert [c.name for c in cores] == ["blocks.0.attn", "blocks.1.attn", "blocks.2.attn"]
    assert cores[0].num_heads == 3 and cores[0].head_dim == 16 and cores[0].scale == 16**-0.5


def test_quantizable_names_in_forward_order():
    model = make_tiny("distilled")
    per_block = ["attn.qkv", "attn", "attn.proj", "mlp.fc1", "mlp.fc2"]
    want = ["patch_embed.proj"] + [f"blocks.{i}.{p}" for i in range(3) for p in per_block] + ["head", "head_dist"]
    assert quantizable_names(model) == want


@pytest.mark.parametrize("method", ["repq", "dopq"])
def test_repq_plans_per_channel_post_ln_inputs(method):
    model = make_tiny("vit")
    plan = build_plan(model, PTQConfig(method=method))
    per_channel = sorted(n for n, s in plan.items() if (s.get("a_quant") or {}).get("channels"))
    assert per_channel == sorted(f"blocks.{i}.{p}" for i in range(3) for p in ("attn.qkv", "mlp.fc1"))
    assert plan["blocks.0.attn"]["attn_quant"] == {"kind": "log", "bits": 8, "sqrt2": True}
    baseline = build_plan(model, PTQConfig(method="minmax"))
    assert not any((s.get("a_quant") or {}).get("channels") for s in baseline.values())


def test_explicit_attention_matches_timm():
    model = make_tiny("qknorm")
    attn = model.blocks[0].attn
    x = torch.randn(2, 17, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = attn(x)
        attn.__class__ = ExplicitAttention
        got = attn(x)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
