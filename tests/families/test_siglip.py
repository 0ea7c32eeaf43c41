"""SigLIP-style attention-pool head (timm ``global_pool='map'``): the pool's own attention is quantized and exported,
token reduction weighs merged tokens in the pool, and the adapter's forward split is the model's own."""

from __future__ import annotations

import copy

import pytest
import torch

import vitkit
from vitkit.adapters import adapter_for, run_forward
from vitkit.adapters.timm_vit_pool import ExplicitAttentionPool, attention_pool
from vitkit.errors import UnsupportedModelError
from vitkit.quant import PTQConfig, quantizers, set_quant_enabled
from vitkit.quant.modules import QuantLinear

from ..conftest import family_images, make_family


def _out(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_adapter_sees_the_pool_and_splits_the_forward_exactly():
    model, x = make_family("siglip"), family_images("siglip")
    host = adapter_for(model)
    assert "attn_pool" in host.describe(model).features
    roles = {r.role for r in host.linear_roles(model).values()}
    assert {"pool_q", "pool_kv", "pool_out", "pool_mlp_in", "pool_mlp_out"} <= roles
    assert host.attention_cores(model)[-1].name == "attn_pool"
    with torch.no_grad():
        assert torch.equal(run_forward(model, x), model(x))


def test_explicit_pool_equals_timm_pool():
    model, x = make_family("siglip"), family_images("siglip")
    ref = _out(model, x)
    model.attn_pool.__class__ = ExplicitAttentionPool
    torch.testing.assert_close(_out(model, x), ref, rtol=1e-5, atol=1e-5)


def test_ptq_quantizes_the_pools_own_attention_and_repq_is_exact_in_float():
    ref, model, x = make_family("siglip"), make_family("siglip"), family_images("siglip")
    vitkit.apply_(model, PTQConfig(w_bits=4, a_bits=4, method="repq", calib_images=4), calib=x)
    pool = model.attn_pool
    assert type(pool).__name__ == "QuantAttentionPoolLatent"
    assert all(getattr(pool, f"{s}_quant", None) is not None for s in ("q", "k", "attn", "v"))
    assert all(isinstance(pool.get_submodule(p), QuantLinear) for p in ("q", "kv", "proj", "mlp.fc1", "mlp.fc2"))
    assert "attn_pool.kv" in model.vitkit_steps[-1].decisions["reparameterized"]  # final norm → kv folded
    assert any(n.startswith("attn_pool.") for n in quantizers(model))
    set_quant_enabled(model, False)
    torch.testing.assert_close(_out(model, x), _out(ref, x), rtol=1e-5, atol=1e-5)
    set_quant_enabled(model, True)
    assert not torch.allclose(_out(model, x), _out(ref, x), atol=1e-3)


def test_merged_tokens_weigh_as_the_patches_they_stand_for_in_the_pool():
    """Proportional attention (ToMe Eq. 1) in the pool: tokens [a, a, b] ≡ tokens [a, b] with sizes [2, 1]."""
    model = make_family("siglip")
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 1, 48, generator=g), torch.randn(2, 5, 48, generator=g)
    with torch.no_grad():
        dup = attention_pool(model, torch.cat([a, a, b], 1))
        size = torch.cat([torch.full((2, 1, 1), 2.0), torch.ones(2, 5, 1)], 1)
        merged = attention_pool(model, torch.cat([a, b], 1), size=size)
    torch.testing.assert_close(merged, dup, rtol=1e-5, atol=1e-5)


def test_tome_at_r0_is_exact_and_merges_otherwise():
    model, x = make_family("siglip"), family_images("siglip")
    ref = _out(model, x)
    tome = copy.deepcopy(model)
    vitkit.apply_(tome, vitkit.ToMeConfig(r=0))
    assert torch.equal(_out(tome, x), ref)
    vitkit.apply_(model, vitkit.ToMeConfig(r=3))
    assert not torch.allclose(_out(model, x), ref, atol=1e-4)


def test_unhandled_pool_variant_is_named():
    model = make_family("siglip")
    model.attn_pool.pos_embed = torch.nn.Parameter(torch.zeros(16, 48))
    with pytest.raises(UnsupportedModelError, match="attn_pool has its own position embedding"):
        vitkit.apply_(model, PTQConfig(w_bits=8, a_bits=8, calib_images=4), calib=family_images("siglip"))
    assert not quantizers(model)  # nothing half-patched


def test_onnx_export_keeps_the_quantized_pool(tmp_path):
    pytest.importorskip("onnxruntime")
    from vitkit.deploy import export_model

    model, x = make_family("siglip"), family_images("siglip", 8)
    res = export_model(model, tmp_path / "float", images=8, bench=False)
    assert res.max_abs_diff <= 1e-4 and res.agreement == 1.0
    vitkit.apply_(model, PTQConfig(w_bits=8, a_bits=8, method="repq", calib_images=8), calib=x)
    res = export_model(model, tmp_path / "q", images=8, quant="fake", bench=False)
    assert res.mode == "fake" and res.max_abs_diff < 1e-2
    import onnx

    graph = onnx.load(str(res.path)).graph
    names = " ".join(n.name for n in graph.node)
    assert "attn_pool" in names  # the pool's quantizers are in the graph
