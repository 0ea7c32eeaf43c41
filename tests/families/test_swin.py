"""The Swin adapter (timm ``SwinTransformer``): each method's defining property on a tiny random-init Swin.

PTQ (RepQ-ViT reparameterization exact in float, log√2 softmax quantizer inside the windows), LoRA fold-back,
AdaptFormer, merging, save → load, head / MLP / block pruning (a pruned head is a zeroed head, its
relative-position-bias column goes with it), ONNX export, int8 deployment; refusals and bad input.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import vitkit
from vitkit.adapt import AdapterConfig, LoRAConfig, lora_modules
from vitkit.adapters import HostAdapter, adapter_for, run_forward
from vitkit.adapters.timm_swin_host import TIMM_SWIN
from vitkit.adapters.timm_swin_layers import ExplicitWindowAttention
from vitkit.api import merge_back
from vitkit.artifact import load_artifact, save_artifact
from vitkit.errors import UnsupportedModelError
from vitkit.quant import PTQConfig, quantizers, set_quant_enabled
from vitkit.quant.modules import is_quant_attention
from vitkit.tokens.random_drop import RandomDropConfig

from ..conftest import family_images, make_family


def _swin(seed=0):
    return make_family("swin", seed=seed)


def _x(n=4):
    return family_images("swin", n)


def _out(model, x):
    with torch.no_grad():
        return model(x)


def _perturb_bias_tables(model, seed=0):
    """Random init leaves the relative-position-bias tables near 0; make them matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.copy_(torch.randn(p.shape, generator=g))
    return model


# -- adapter basics ------------------------------------------------------------------------------------------------
def test_adapter_describes_stages_blocks_and_roles():
    model = _swin()
    host = adapter_for(model)
    info = host.describe(model)
    assert host.name == "timm SwinTransformer" and info.depth == 4
    assert info.num_heads == (2, 2, 4, 4) and info.block_dims == (24, 24, 48, 48)
    assert info.block_tokens == (256, 256, 64, 64) and info.block_spans == (16,) * 4
    assert "shifted_windows" in info.features and info.num_prefix_tokens == 0
    stages = host.stages(model)
    assert [s.block_names for s in stages] == [
        ("layers.0.blocks.0", "layers.0.blocks.1"),
        ("layers.1.blocks.0", "layers.1.blocks.1"),
    ]
    assert stages[0].window == (4, 4) and stages[1].downsample == "layers.1.downsample"
    roles = host.linear_roles(model)
    assert len(roles) == 4 * 4 + 1 + 1 and roles["head.fc"].role == "head"
    assert roles["layers.1.downsample.reduction"].role == "downsample"  # patch merging: quantized like a linear
    assert isinstance(TIMM_SWIN, HostAdapter)
    assert roles["layers.1.blocks.1.mlp.fc2"].block == 3
    cores = host.attention_cores(model)
    assert [c.num_heads for c in cores] == [2, 2, 4, 4] and cores[2].name == "layers.1.blocks.0.attn"
    # the forward split is timm's
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(run_forward(model, x), model(x), rtol=0, atol=0)  # patch merging in between
    roles = host.key_roles(model.state_dict())
    assert roles["layers.1.blocks.0.attn.relative_position_bias_table"].part == "rel_pos_bias"
    assert roles["layers.1.blocks.0.attn.qkv.weight"].block == 2
    assert all(r.part != "other" for r in roles.values())


def test_explicit_window_attention_equals_timm():
    """The explicit twin (bias + shift mask added to the logits) computes what timm's attention computes."""
    model = _perturb_bias_tables(_swin())
    x = _x()
    ref = _out(model, x)
    for core in adapter_for(model).attention_cores(model):
        model.get_submodule(core.name).__class__ = ExplicitWindowAttention
    torch.testing.assert_close(_out(model, x), ref, rtol=1e-5, atol=1e-5)


# -- PTQ ------------------------------------------------------------------------------------------------------------
def test_repq_reparameterization_is_exact_in_float_and_log_sqrt2_in_windows():
    ref = _perturb_bias_tables(_swin())
    model = copy.deepcopy(ref)
    x = _x()
    vitkit.apply_(model, PTQConfig(w_bits=4, a_bits=4, method="repq", calib_images=4), calib=x)
    decisions = model.vitkit_steps[-1].decisions
    # norm1 → qkv and norm2 → fc1 of every block, and patch merging's norm → reduction
    assert len(decisions["reparameterized"]) == 2 * 4 + 1
    assert "layers.1.downsample.reduction" in decisions["added_bias"]
    assert not torch.allclose(model.layers[0].blocks[0].norm1.weight, ref.layers[0].blocks[0].norm1.weight)
    attn = model.layers[1].blocks[1].attn  # a shifted block: bias table and shift mask both in the logits
    assert is_quant_attention(attn) and any(model.layers[1].blocks[1].shift_size)
    assert decisions["plan"]["layers.1.blocks.1.attn"]["attn_quant"] == {"kind": "log", "bits": 4, "sqrt2": True}
    assert type(attn.attn_quant).__name__ == "LogQuantizer" and attn.attn_quant.calibrated
    set_quant_enabled(model, False)
    torch.testing.assert_close(_out(model, x), _out(ref, x), atol=1e-5, rtol=1e-5)
    set_quant_enabled(model, True)
    q4 = _out(model, x)
    assert not torch.allclose(q4, _out(ref, x), atol=1e-3)
    # the log√2 quantizer really sees the windowed softmax maps: switching it off alone changes the output
    attn.attn_quant.enabled = False
    assert not torch.equal(_out(model, x), q4)


def test_ptq_w8a8_close_to_float_and_artifact_reproduces(tmp_path):
    ref = _perturb_bias_tables(_swin())
    model = copy.deepcopy(ref)
    x = _x(8)
    vitkit.apply_(model, PTQConfig(w_bits=8, a_bits=8, calib_images=8), calib=x)
    y = _out(model, x)
    cos = nn.functional.cosine_similarity(y, _out(ref, x), dim=-1)
    assert cos.min() > 0.98
    assert adapter_for(model).describe(model).depth == 4  # a quantized Swin is still a Swin to later steps
    from vitkit.quant.integer import to_integer

    with pytest.raises(UnsupportedModelError, match="avg_pool"):  # the integer-only path rebuilds plain ViTs
        to_integer(model)
    save_artifact(model, None, None, tmp_path / "q")
    loaded = load_artifact(tmp_path / "q")
    assert quantizers(loaded).keys() == quantizers(model).keys()
    torch.testing.assert_close(_out(loaded, x), y, rtol=0, atol=1e-6)


def test_mixed_ptq_meets_the_bit_budget_over_every_swin_linear(tmp_path):
    from vitkit.quant import MixedPrecisionConfig

    model = _swin()
    x = _x(8)
    rep = vitkit.apply_(model, MixedPrecisionConfig(avg_bits=5.0, calib_images=8), calib=x)
    d = rep.steps[0].decisions
    assert 4.0 <= d["avg_bits"] <= 5.0 and set(d["layer_bits"].values()) <= {4, 6, 8}
    assert "layers.1.downsample.reduction" in d["layer_bits"] and "layers.1.blocks.1.attn.qkv" in d["layer_bits"]
    save_artifact(model, None, None, tmp_path / "m")
    torch.testing.assert_close(_out(load_artifact(tmp_path / "m"), x), _out(model, x), rtol=1e-5, atol=1e-5)


def test_bf16_precision_stays_close_to_float():
    from vitkit.quant import PrecisionConfig

    ref = _swin()
    model = copy.deepcopy(ref)
    vitkit.apply_(model, PrecisionConfig(dtype="bf16", require_native=False))
    x = _x()
    y = _out(model, x)
    assert y.dtype == torch.float32
    assert nn.functional.cosine_similarity(y, _out(ref, x), dim=-1).min() > 0.99


# -- adaptation and merging -----------------------------------------------------------------------------------------
def test_lora_fold_back_is_exact_and_artifact_reproduces(tmp_path):
    model = _swin()
    x = _x()
    keys = list(model.state_dict())
    vitkit.apply_(model, LoRAConfig(rank=2, alpha=4))
    names = sorted(lora_modules(model))
    assert len(names) == 16 and all(n.startswith("layers.") for n in names)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.1)
    adapted = _out(model, x)
    assert not torch.allclose(adapted, _out(_swin(), x), atol=1e-4)
    save_artifact(model, None, None, tmp_path / "lora")
    torch.testing.assert_close(_out(load_artifact(tmp_path / "lora"), x), adapted, rtol=0, atol=1e-6)
    merge_back(model)
    assert list(model.state_dict()) == keys and not lora_modules(model)
    torch.testing.assert_close(_out(model, x), adapted, rtol=1e-5, atol=1e-5)


def test_adapter_branch_starts_as_identity_and_artifact_reproduces(tmp_path):
    model = _swin()
    x = _x()
    before = _out(model, x)
    vitkit.apply_(model, AdapterConfig(bottleneck=4, scale=0.5))
    torch.testing.assert_close(_out(model, x), before, rtol=0, atol=1e-6)  # up-projection starts at zero
    ups = [m for n, m in model.named_modules() if n.endswith(".mlp.adapter_up")]
    assert len(ups) == 4  # one AdaptMLP beside every block's MLP, both stages
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for up in ups:
            up.weight.copy_(torch.randn(up.weight.shape, generator=g) * 0.1)
    adapted = _out(model, x)
    assert not torch.allclose(adapted, before, atol=1e-4)
    save_artifact(model, None, None, tmp_path / "a")
    torch.testing.assert_close(_out(load_artifact(tmp_path / "a"), x), adapted, rtol=0, atol=1e-6)


def test_merging_identical_models_is_identity_and_average_is_mean():
    a, b = _swin(0), _swin(1)
    x = _x()
    same = vitkit.merge([a, a], vitkit.TIESConfig(density=0.5), base=a)
    merged = _swin(2)
    merged.load_state_dict(same)
    torch.testing.assert_close(_out(merged, x), _out(a, x), rtol=0, atol=1e-6)
    avg = vitkit.merge([a, b], vitkit.AverageConfig())
    sa, sb = a.state_dict(), b.state_dict()
    for k in ("layers.1.blocks.0.attn.relative_position_bias_table", "layers.1.downsample.reduction.weight"):
        torch.testing.assert_close(avg[k], (sa[k] + sb[k]) / 2)


# -- pruning --------------------------------------------------------------------------------------------------------
def test_pruned_head_equals_zeroed_head_and_loses_its_bias_column():
    dense = _perturb_bias_tables(_swin())
    x = _x()
    host = adapter_for(dense)
    i, name = 3, "layers.1.blocks.1"  # a shifted block of the 4-head stage
    pruned, zeroed = copy.deepcopy(dense), copy.deepcopy(dense)
    table = dense.get_submodule(name).attn.relative_position_bias_table.detach().clone()  # [(2W−1)², 4]
    host.prune_heads(pruned.get_submodule(name), [0, 2, 3], index=i)
    attn = zeroed.get_submodule(name).attn
    d = attn.qkv.out_features // (3 * attn.num_heads)
    with torch.no_grad():
        for t in range(3):  # head 1's q, k, v rows
            attn.qkv.weight[t * 4 * d + d : t * 4 * d + 2 * d] = 0
            attn.qkv.bias[t * 4 * d + d : t * 4 * d + 2 * d] = 0
        attn.proj.weight[:, d : 2 * d] = 0
    torch.testing.assert_close(_out(pruned, x), _out(zeroed, x), rtol=1e-5, atol=1e-5)
    p_attn = pruned.get_submodule(name).attn
    assert p_attn.num_heads == 3 and p_attn.qkv.out_features == 9 * d and p_attn.proj.in_features == 3 * d
    assert torch.equal(p_attn.relative_position_bias_table, table[:, [0, 2, 3]])
    assert host.describe(pruned).num_heads == (2, 2, 4, 3)


def test_prune_ratio_zero_is_identity_and_pruned_artifact_reproduces(tmp_path):
    model = _swin()
    x = _x()
    ref = _out(model, x)
    vitkit.apply_(model, vitkit.PruneConfig(ratio=0.0, importance="l1"))
    torch.testing.assert_close(_out(model, x), ref, rtol=0, atol=0)
    model = _perturb_bias_tables(_swin())
    vitkit.apply_(model, vitkit.PruneConfig(ratio=0.3, importance="l1", groups=("heads", "mlp")))
    info = adapter_for(model).describe(model)
    assert sum(info.num_heads) < 12 or sum(info.mlp_hidden) < 4 * 2 * 72
    assert sum(info.mlp_hidden) < 96 * 2 + 192 * 2
    y = _out(model, x)
    save_artifact(model, None, None, tmp_path / "p")
    torch.testing.assert_close(_out(load_artifact(tmp_path / "p"), x), y, rtol=0, atol=1e-6)


@pytest.mark.parametrize("target", ["params", "macs"])
def test_prune_removes_the_asked_fraction_across_stages(target):
    """Per-block widths, tokens and window spans price the units: the removed share is the ratio asked for."""
    model = _swin()
    vitkit.apply_(model, vitkit.PruneConfig(ratio=0.3, importance="l1", target=target))
    got = model.vitkit_steps[-1].decisions[target]
    assert 0.29 <= 1 - got["after"] / got["before"] <= 0.33, got


def test_prune_latency_target_measures_windowed_blocks():
    model = _swin()
    cfg = vitkit.PruneConfig(ratio=0.05, importance="l1", target="latency", groups=("heads", "mlp", "blocks"))
    vitkit.apply_(model, cfg)  # per-block costs measured on [B, H, W, C] inputs (block_input_shape)
    costs = model.vitkit_steps[-1].decisions["latency"]["unit_costs_s"]
    assert list(costs) == list(adapter_for(_swin()).describe(_swin()).block_names)
    assert _out(model, _x()).shape == (4, 10)


def test_pruned_mlp_neuron_equals_zeroed_neuron_and_blocks_can_go():
    dense = _swin()
    x = _x()
    host = adapter_for(dense)
    pruned, zeroed = copy.deepcopy(dense), copy.deepcopy(dense)
    host.prune_mlp(pruned.layers[0].blocks[1], [n for n in range(96) if n not in (3, 50)], index=1)
    with torch.no_grad():
        zeroed.layers[0].blocks[1].mlp.fc2.weight[:, [3, 50]] = 0
    torch.testing.assert_close(_out(pruned, x), _out(zeroed, x), rtol=1e-5, atol=1e-5)
    host.keep_blocks(pruned, [0, 2, 3])
    assert adapter_for(pruned).describe(pruned).block_names == (
        "layers.0.blocks.0",
        "layers.1.blocks.0",
        "layers.1.blocks.1",
    )
    assert _out(pruned, x).shape == (4, 10)


# -- export and deployment ------------------------------------------------------------------------------------------
def test_onnx_export_parity(tmp_path):
    pytest.importorskip("onnxruntime")
    from vitkit.data import load_dataset
    from vitkit.deploy import export_model

    model = _perturb_bias_tables(_swin())
    data = load_dataset("digits", "test", model=model)
    res = export_model(model, tmp_path / "f", data=data, images=32, bench=False)
    assert res.mode == "float" and res.max_abs_diff <= 1e-4 and res.agreement == 1.0
    assert (tmp_path / "f" / "model.onnx").stat().st_size > 0


def test_onnx_export_of_quantized_swin(tmp_path):
    pytest.importorskip("onnxruntime")
    from vitkit.data import load_dataset
    from vitkit.deploy import export_model

    model = _perturb_bias_tables(_swin())
    data = load_dataset("digits", "test", model=model)
    calib = torch.stack([load_dataset("digits", "train", model=model)[i][0] for i in range(8)])
    vitkit.apply_(model, PTQConfig(w_bits=8, a_bits=8, calib_images=8), calib=calib)
    res = export_model(model, tmp_path / "q", data=data, images=32, bench=False)  # QDQ: our calibrated scales
    assert res.mode == "qdq" and res.agreement >= 0.95, res
    res = export_model(model, tmp_path / "fake", data=data, images=32, quant="fake", bench=False)
    assert res.mode == "fake" and res.agreement >= 0.95 and res.max_abs_diff < 1e-2, res


def test_deployed_torch_w8a8_agrees_with_fake_quant_and_float():
    from vitkit.deploy.torch_int8 import Int8Linear, int_mm_available, to_torch_w8a8

    if not int_mm_available():
        pytest.skip("torch._int_mm does not run in this PyTorch build")

    ref = _perturb_bias_tables(_swin())
    x = _x(8)
    fq = copy.deepcopy(ref)
    vitkit.apply_(fq, PTQConfig(w_bits=8, a_bits=8, calib_images=8), calib=x)
    y_float, y_fq = _out(ref, x), _out(fq, x)
    runner = to_torch_w8a8(fq, activations="static", compile=False)
    assert sum(isinstance(m, Int8Linear) for m in runner.modules()) == 18  # 16 block linears, reduction, head
    # every int8 linear matches its fake-quant twin within one accumulator step (on the fake-quant inputs)
    seen = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, a, name=n: seen.__setitem__(name, a[0]))
        for n, m in fq.named_modules()
        if isinstance(m, nn.Linear) and getattr(m, "a_quant", None) is not None
    ]
    _out(fq, x)
    for h in hooks:
        h.remove()
    assert len(seen) == 18
    for name, inp in seen.items():
        int8 = runner.get_submodule(name)
        with torch.no_grad():
            want, got = fq.get_submodule(name)(inp), int8(inp)
        assert ((got - want).abs() <= int8.act_scale * int8.w_scale + 1e-5 * want.abs().max()).all(), name
    y_int8 = _out(runner, x)
    # static int8 linears on fake-quant's scales; attention matmuls run in float (fake-quant quantizes them too)
    assert nn.functional.cosine_similarity(y_int8, y_fq, dim=-1).min() > 0.99
    assert nn.functional.cosine_similarity(y_int8, y_float, dim=-1).min() > 0.98


def test_deployed_ort_int8_agrees_with_float(tmp_path):
    pytest.importorskip("onnxruntime")
    from vitkit.deploy import deploy

    ref = _perturb_bias_tables(_swin())
    x = _x(8)
    fq = copy.deepcopy(ref)
    vitkit.apply_(fq, PTQConfig(w_bits=8, a_bits=8, calib_images=8), calib=x)
    y_float = _out(ref, x)
    ort = deploy(fq, tmp_path, runtime="ort-int8")  # RepQ-folded weights, ONNX Runtime dynamic int8
    assert (tmp_path / "model.int8.onnx").is_file()
    assert nn.functional.cosine_similarity(torch.as_tensor(ort(x)), y_float, dim=-1).min() > 0.98


# -- refusals and bad input -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cfg",
    [
        vitkit.ToMeConfig(r=2),
        vitkit.EViTConfig(keep_rate=0.7),
        vitkit.PiToMeConfig(ratio=0.8),
        vitkit.HiPruneConfig(keep=0.5),
        RandomDropConfig(r=2),
        vitkit.EarlyExitConfig(exits=[0], threshold=0.2, train={"epochs": 0}),
        vitkit.PromptConfig(num_tokens=2),
    ],
    ids=["tome", "evit", "pitome", "hiprune", "random_drop", "early_exit", "prompt"],
)
def test_token_methods_are_refused_with_the_reason(cfg):
    model = _swin()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(UnsupportedModelError, match="windowed attention on a fixed token grid") as err:
        vitkit.apply_(model, cfg)
    assert "cannot run on a SwinTransformer" in str(err.value) and "methods that apply to Swin: ptq" in str(err.value)
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_permutation_merging_is_refused_with_the_reason():
    from vitkit.merging.pleas import PLeaSConfig

    a, b = _swin(0), _swin(1)
    with pytest.raises(UnsupportedModelError, match="patch merging"):
        vitkit.merge([a, b], PLeaSConfig(), model=_swin(2), calib=_x())


class _MyNorm(nn.LayerNorm):
    """A custom norm the adapter does not know."""


@pytest.mark.parametrize("where", ["layers.1.blocks.0.norm2", "layers.0.blocks.1"])
def test_unknown_module_is_named_and_nothing_is_patched(where):
    model = _swin()
    if where.endswith("norm2"):
        old = model.get_submodule(where)
        model.set_submodule(where, _MyNorm(old.normalized_shape))
    else:
        model.set_submodule(where, nn.Identity())
    classes = {n: type(m) for n, m in model.named_modules()}
    state = copy.deepcopy(model.state_dict())
    for cfg in (
        PTQConfig(calib_images=4),
        LoRAConfig(rank=2),
        AdapterConfig(bottleneck=4),
        vitkit.PruneConfig(ratio=0.2, importance="l1"),
    ):
        with pytest.raises(UnsupportedModelError, match=where.replace(".", r"\.")):
            vitkit.apply_(model, cfg, calib=_x())
        assert {n: type(m) for n, m in model.named_modules()} == classes
        assert list(model.state_dict()) == list(state)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
