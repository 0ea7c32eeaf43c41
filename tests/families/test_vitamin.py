"""ViTamin (timm ``VisionTransformer`` with a ``HybridEmbed`` MbConv stem and ``GeGluMlp`` MLPs) and plain timm ViTs
with GLU MLPs (``SwiGLU``, ``SwiGLUPacked``) through the plain ViT adapter, on tiny random-init models: each
method's defining property, the (norm → linears) pairs and roles, and the named refusals."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import SwiGLU, SwiGLUPacked

import vitkit
from vitkit.adapters import adapter_for, run_forward
from vitkit.artifact import load_artifact, save_artifact
from vitkit.errors import UnsupportedModelError
from vitkit.quant.modules import QuantConv2d, quantizers, set_quant_enabled

from ..conftest import TINY_BASE, family_images, make_family

#: tiny plain ViTs with GLU MLPs (built with timm directly: a class-valued kwarg cannot be recorded in an artifact)
GLU_MLPS = {"swiglu": {"mlp_layer": SwiGLU}, "packed": {"mlp_layer": SwiGLUPacked}}


def vitamin(seed: int = 0) -> nn.Module:
    return make_family("vitamin", seed=seed)


def glu_vit(kind: str = "swiglu", seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", **dict(TINY_BASE, **GLU_MLPS[kind], **overrides))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def build(name: str) -> nn.Module:
    return vitamin() if name == "vitamin" else glu_vit(name)


def images(name: str) -> torch.Tensor:
    return family_images("vitamin") if name == "vitamin" else torch.randn(4, 3, 32, 32, generator=torch.Generator())


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture
def x():
    return family_images("vitamin")


MODELS = ["vitamin", "swiglu", "packed"]


# -- the adapter ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_host_forward_is_bit_identical(name):
    model, x = build(name), images(name)
    with torch.no_grad():
        assert torch.equal(run_forward(model, x), model(x))


def test_describe_vitamin():
    model = vitamin()
    host = adapter_for(model)
    info = host.describe(model)
    assert {"glu_mlp", "conv_stem", "avg_pool", "no_class_token"} <= info.features
    assert "mlp_norm" not in info.features  # GeGluMlp's norm is an input norm, not a hidden one
    assert info.mlp_hidden == (768, 768) and info.grid_size == (4, 4) and info.patch_size == (16, 16)
    assert host.input_size(model) == (3, 64, 64) and info.in_chans == 3
    assert host.outer_layers(model).patch_proj_name == "patch_embed.backbone.stem.conv1"


def test_vitamin_roles_and_pairs():
    model = vitamin()
    host = adapter_for(model)
    roles = host.linear_roles(model)
    convs = {n for n, r in roles.items() if r.role == "conv"}
    stem = {f"patch_embed.{n}" for n, m in model.patch_embed.named_modules() if isinstance(m, nn.Conv2d)}
    assert convs == stem - {"patch_embed.backbone.stem.conv1"} and convs  # every stem conv but the first
    assert roles["blocks.0.mlp.w0"].role == roles["blocks.0.mlp.w1"].role == "mlp_in"
    assert roles["blocks.0.mlp.w2"].role == "mlp_out"
    pairs = {p.norm: p.linears for p in host.norm_linear_pairs(model)}
    assert pairs["blocks.0.mlp.norm"] == ("blocks.0.mlp.w0", "blocks.0.mlp.w1")
    assert "blocks.0.norm2" not in pairs  # it feeds the MLP's norm, not a Linear
    lin = host.block_linears(model.blocks[1], index=1)
    mlp = model.blocks[1].mlp
    assert lin["mlp_gate"] is mlp.w0 and lin["mlp_in"] is mlp.w1 and lin["mlp_out"] is mlp.w2


def test_glu_vit_roles_and_pairs():
    for kind, ins in (("swiglu", ("fc1_g", "fc1_x")), ("packed", ("fc1",))):
        model = glu_vit(kind)
        host = adapter_for(model)
        assert "glu_mlp" in host.describe(model).features
        pairs = {p.norm: p.linears for p in host.norm_linear_pairs(model)}
        assert pairs["blocks.0.norm2"] == tuple(f"blocks.0.mlp.{a}" for a in ins)
    assert "mlp_norm" in adapter_for(m := glu_vit(scale_mlp_norm=True)).describe(m).features


# -- PTQ ---------------------------------------------------------------------------------------------------------
def test_vitamin_ptq_repq_is_exact_in_float_quantizes_the_stem_and_reloads(x, tmp_path):
    model = vitamin()
    ref = run(copy.deepcopy(model), x)
    done = vitkit.apply_(model, vitkit.PTQConfig(method="repq", calib_images=4), calib=x).steps[-1].decisions
    assert {"blocks.0.mlp.w0", "blocks.0.mlp.w1"} <= set(done["reparameterized"])  # folded through mlp.norm
    stem = [m for m in model.patch_embed.modules() if isinstance(m, nn.Conv2d)]
    assert stem and all(isinstance(m, QuantConv2d) for m in stem)
    assert all(hasattr(getattr(model.blocks[0].mlp, a), "w_quant") for a in ("w0", "w1", "w2"))
    quantized = run(model, x)
    assert not torch.equal(quantized, ref)
    save_artifact(model, None, None, tmp_path / "a")
    torch.testing.assert_close(run(load_artifact(tmp_path / "a"), x), quantized, rtol=1e-5, atol=1e-5)
    set_quant_enabled(model, False)
    torch.testing.assert_close(run(model, x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["swiglu", "packed"])
def test_glu_vit_ptq_repq_is_exact_in_float(kind):
    model, x = glu_vit(kind), images(kind)
    ref = run(copy.deepcopy(model), x)
    done = vitkit.apply_(model, vitkit.PTQConfig(method="repq", calib_images=4), calib=x).steps[-1].decisions
    ins = ("fc1_g", "fc1_x") if kind == "swiglu" else ("fc1",)
    assert {f"blocks.0.mlp.{a}" for a in ins} <= set(done["reparameterized"])
    assert quantizers(model) and not torch.equal(run(model, x), ref)
    set_quant_enabled(model, False)
    torch.testing.assert_close(run(model, x), ref, rtol=1e-5, atol=1e-5)


def test_integer_path_refuses_the_conv_stem_by_name(x):
    from vitkit.quant.integer import IntegerViT

    model = vitamin()
    vitkit.apply_(model, vitkit.PTQConfig(method="minmax", calib_images=2), calib=x[:2])
    with pytest.raises(UnsupportedModelError, match="conv_stem"):
        IntegerViT(model)
    with pytest.raises(UnsupportedModelError, match="GLU MLP"):
        adapter_for(model).block_layers(model.blocks[0], index=0)


# -- pruning -----------------------------------------------------------------------------------------------------
def _zero_neurons(model: nn.Module, block: int, drop: list[int]) -> None:
    """Zero the gate and value rows (and biases) of neurons ``drop`` and their output columns."""
    mlp = model.blocks[block].mlp
    lin = adapter_for(model).block_linears(model.blocks[block], index=block)
    n = lin["mlp_out"].in_features
    with torch.no_grad():
        for j in drop:
            if "mlp_gate" in lin:
                rows = [(lin["mlp_gate"], j), (lin["mlp_in"], j)]
            else:  # packed: rows j and n + j of fc1
                rows = [(mlp.fc1, j), (mlp.fc1, n + j)]
            for layer, row in rows:
                layer.weight[row] = 0
                layer.bias[row] = 0
            lin["mlp_out"].weight[:, j] = 0


@pytest.mark.parametrize("name", MODELS)
def test_pruned_glu_neuron_equals_zeroed_gate_and_value(name):
    model, x, drop = build(name), images(name), [0, 5, 77]
    zeroed = copy.deepcopy(model)
    _zero_neurons(zeroed, 1, drop)
    n = adapter_for(model).describe(model).mlp_hidden[1]
    keep = [j for j in range(n) if j not in drop]
    adapter_for(model).prune_mlp(model.blocks[1], keep, index=1)
    assert adapter_for(model).describe(model).mlp_hidden[1] == len(keep)
    torch.testing.assert_close(run(model, x), run(zeroed, x), rtol=1e-5, atol=1e-5)


def test_glu_vit_with_hidden_norm_refuses_neuron_pruning_by_name():
    model = glu_vit(scale_mlp_norm=True)
    with pytest.raises(UnsupportedModelError, match=r"blocks\.0\.mlp has a hidden norm"):
        vitkit.apply_(model, vitkit.PruneConfig(ratio=0.2, importance="l1", groups=("mlp",)))


def test_vitamin_prune_ratio_zero_is_identity_and_pruned_model_reloads(x, tmp_path):
    model = vitamin()
    ref = run(copy.deepcopy(model), x)
    vitkit.apply_(model, vitkit.PruneConfig(ratio=0.0, importance="l1"))
    assert torch.equal(run(model, x), ref)
    model = vitamin()
    vitkit.apply_(model, vitkit.PruneConfig(ratio=0.15, importance="l1"))  # the conv stem's MACs stay
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in vitamin().parameters())
    out = run(model, x)
    save_artifact(model, None, None, tmp_path / "a")
    assert torch.equal(run(load_artifact(tmp_path / "a"), x), out)


# -- LoRA ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "layer"), [("vitamin", "w0"), ("swiglu", "fc1_g")])
def test_lora_reaches_the_gate_and_folds_back_exactly(name, layer):
    model, x = build(name), images(name)
    ref = run(copy.deepcopy(model), x)
    vitkit.apply_(model, vitkit.LoRAConfig(rank=2))
    adapted_names = [n for n, m in model.named_modules() if hasattr(m, "lora_A")]
    assert f"blocks.0.mlp.{layer}" in adapted_names and not any(n.startswith("patch_embed") for n in adapted_names)
    torch.testing.assert_close(run(model, x), ref, rtol=1e-5, atol=1e-5)  # B = 0: the base model
    with torch.no_grad():
        getattr(model.blocks[0].mlp, layer).lora_B.normal_(0, 0.5)
    adapted = run(model, x)
    assert (adapted - ref).abs().max() > 1e-3
    vitkit.apply_(model, vitkit.LoRAMergeConfig())
    assert type(getattr(model.blocks[0].mlp, layer)) is nn.Linear
    torch.testing.assert_close(run(model, x), adapted, rtol=1e-5, atol=1e-5)


def test_adaptformer_branch_beside_a_geglu_mlp_starts_at_identity(x):
    model = vitamin()
    ref = run(copy.deepcopy(model), x)
    vitkit.apply_(model, vitkit.AdapterConfig(bottleneck=4))
    assert type(model.blocks[0].mlp).__name__ == "AdaptFormerMlp" and hasattr(model.blocks[0].mlp, "w0")
    torch.testing.assert_close(run(model, x), ref, rtol=1e-5, atol=1e-5)


# -- token reduction ---------------------------------------------------------------------------------------------
def test_tome_r0_is_exact_and_tome_reloads(x, tmp_path):
    model = vitamin()
    ref = run(copy.deepcopy(model), x)
    vitkit.apply_(model, vitkit.ToMeConfig(r=0))
    assert torch.equal(run(model, x), ref)
    model = vitamin()
    vitkit.apply_(model, vitkit.ToMeConfig(r=2))
    out = run(model, x)
    assert not torch.allclose(out, ref)
    save_artifact(model, None, None, tmp_path / "a")
    assert torch.equal(run(load_artifact(tmp_path / "a"), x), out)


def test_evit_is_refused_by_name_without_a_class_token(x):
    with pytest.raises(UnsupportedModelError, match="no class token"):
        vitkit.apply_(vitamin(), vitkit.EViTConfig(keep_rate=0.7))


# -- merging -------------------------------------------------------------------------------------------------------
def test_permutation_merging_is_refused_by_name():
    model = vitamin()
    host = adapter_for(model)
    roles = host.key_roles(model.state_dict())
    assert (
        roles["blocks.0.mlp.w0.weight"].part == "mlp_gate" and roles["blocks.0.mlp.norm.weight"].part == "mlp_in_norm"
    )
    assert roles["patch_embed.backbone.stem.conv1.weight"].part == "stem"
    with pytest.raises(UnsupportedModelError, match="permutation symmetry"):
        host.permutation_axes(roles)
    with pytest.raises(UnsupportedModelError, match="GLU MLP"):
        host.set_mlp_widths(model, [10, 10])


# -- save / load, ONNX ---------------------------------------------------------------------------------------------
def test_save_load_reproduces(x, tmp_path):
    model = vitamin()
    vitkit.apply_(model, [vitkit.PruneConfig(ratio=0.2, importance="l1"), vitkit.ToMeConfig(r=1)])
    out = run(model, x)
    save_artifact(model, None, None, tmp_path / "a")
    torch.testing.assert_close(run(load_artifact(tmp_path / "a"), x), out, rtol=1e-5, atol=1e-5)


def test_onnx_export_parity(x, tmp_path):
    pytest.importorskip("onnxruntime")
    from vitkit.deploy import export_model

    model = vitamin()
    res = export_model(model, tmp_path / "out", data=[(img, 0) for img in x], images=4, bench=False)
    assert res.max_abs_diff <= 1e-4 and res.agreement == 1.0
