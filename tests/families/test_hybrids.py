"""The conv + attention hybrids (TinyViT, EfficientFormer): each working method's defining property on tiny
random-init models, the named refusals, and an unhandled layer refused before anything is patched."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import vitkit
from vitkit.adapters import EXPLICIT_ATTENTION, adapter_for
from vitkit.artifact import load_artifact, save_artifact
from vitkit.errors import UnsupportedModelError
from vitkit.ops import quant as Q
from vitkit.quant.modules import QuantConv2d, is_quant_attention, quantizers, set_quant_enabled
from vitkit.quant.ptq import quant_sites

from ..conftest import family_images, make_family

HYBRIDS = ["tiny_vit", "efficientformer"]
#: overrides giving each family at least two attention blocks (the tiny EfficientFormer has one)
TWO_BLOCKS = {"tiny_vit": {}, "efficientformer": {"num_vit": 2}}


def build(family: str, seed: int = 0, **overrides) -> nn.Module:
    """A tiny hybrid with non-trivial BatchNorms (random init leaves them at identity, MBConv's last one at 0)."""
    model = make_family(family, seed=seed, **overrides)
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
            if hasattr(m, "attention_biases"):
                m.attention_biases.copy_(0.5 * torch.randn(m.attention_biases.shape, generator=gen))
    return model.eval()


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model.eval()(x)
    return out[0] if isinstance(out, tuple) else out


@pytest.fixture(params=HYBRIDS)
def family(request):
    return request.param


def test_adapter_describes_attention_blocks_and_conv_sites(family):
    model = build(family)
    host = adapter_for(model)
    info = host.describe(model)
    assert host.name.endswith(type(model).__name__)
    assert [n for n, _ in host.blocks(model)] == list(info.block_names)
    assert len(host.attention_cores(model)) == info.depth == len(info.block_dims)
    assert sum(len(s.block_names) for s in host.stages(model)) == info.depth
    sites = quant_sites(model)
    modules = dict(model.named_modules())
    convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    assert set(convs) <= set(sites), "every conv layer has a quantization site"
    assert sites[host.outer_layers(model).patch_proj_name] == "embed"
    assert sorted(r for r in set(sites.values())) == sorted(
        {"embed", "conv", "qkv", "attention", "attn_out", "mlp_in", "mlp_out", "head"}
    )
    for core in host.attention_cores(model):
        assert type(modules[core.name]) in EXPLICIT_ATTENTION


def test_explicit_attention_twin_is_the_host_attention(family):
    """Both matmuls written out (what quantizers hook) with the attention biases kept: same outputs."""
    model, x = build(family), family_images(family, 2)
    ref = run(model, x)
    for core in adapter_for(model).attention_cores(model):
        mod = model.get_submodule(core.name)
        mod.__class__ = EXPLICIT_ATTENTION[type(mod)]
    torch.testing.assert_close(run(model, x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["repq", "minmax"])
def test_ptq_with_quantizers_off_is_the_float_model(family, method):
    """Convs per output channel, attention matmul inputs quantized; off = float (RepQ's fold is exact in float)."""
    model, x = build(family), family_images(family)
    ref = run(model, x)
    vitkit.apply_(model, vitkit.PTQConfig(w_bits=8, a_bits=8, method=method, calib_images=4), calib=x)
    modules = dict(model.named_modules())
    for name, role in quant_sites(model).items():
        mod = modules[name]
        if role == "attention":
            assert is_quant_attention(mod) and {"q_quant", "k_quant", "attn_quant", "v_quant"} <= set(
                dict(mod.named_children())
            )
        elif isinstance(mod, nn.Conv2d):
            assert isinstance(mod, QuantConv2d) and mod.w_quant.scale.numel() == mod.out_channels
    quantized = run(model, x)
    cos = nn.functional.cosine_similarity(quantized.flatten(), ref.flatten(), dim=0)
    assert cos > 0.98, f"W8A8 {method} drifted from float: cos {cos:.4f}"
    set_quant_enabled(model, False)
    torch.testing.assert_close(run(model, x), ref, rtol=1e-4, atol=1e-4)


def test_conv_bn_quantization_commutes():
    """Why the BN after a conv is not folded before fake quantization: per-output-channel quantization commutes
    with BN's per-channel scale, so ``BN(conv_{Q(W)})`` equals the folded conv with ``Q(γ·W)``."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 4, 3, 3, generator=gen)
    gamma = 0.2 + torch.rand(8, generator=gen)  # BN weight / sqrt(var + eps) > 0
    for search in ("minmax", "quantile"):
        s, z = Q.search_uniform(w, 8, axis=0, method=search)
        wq = Q.fake_quant(w, s, z, 8, symmetric=False, axis=0)
        s2, z2 = Q.search_uniform(w * gamma[:, None, None, None], 8, axis=0, method=search)
        wq2 = Q.fake_quant(w * gamma[:, None, None, None], s2, z2, 8, symmetric=False, axis=0)
        torch.testing.assert_close(wq * gamma[:, None, None, None], wq2, rtol=1e-5, atol=1e-6)


def test_mixed_ptq_meets_its_bit_budget_over_conv_and_attention_layers(family, tmp_path):
    model, x = build(family), family_images(family)
    decisions = vitkit.apply_(model, vitkit.MixedPrecisionConfig(avg_bits=6.0, calib_images=4), calib=x)
    step = decisions.steps[-1].decisions if hasattr(decisions, "steps") else decisions
    bits = step["layer_bits"]
    sizes = {n: model.get_submodule(n).weight.numel() for n in bits}
    assert sum(bits[n] * sizes[n] for n in bits) <= 6.0 * sum(sizes.values()) + 1e-6
    assert any(quant_sites(model)[n] == "conv" for n in bits) and any(quant_sites(model)[n] == "qkv" for n in bits)
    expected = run(model, x)
    save_artifact(model, None, None, tmp_path / "art")
    torch.testing.assert_close(run(load_artifact(tmp_path / "art"), x), expected, rtol=1e-5, atol=1e-5)


def test_bf16_precision_stays_close(family):
    model, x = build(family), family_images(family)
    ref = run(model, x)
    vitkit.apply_(model, vitkit.PrecisionConfig(dtype="bf16", require_native=False))
    got = run(model, x).float()
    assert nn.functional.cosine_similarity(got.flatten(), ref.flatten(), dim=0) > 0.99


def test_ptq_artifact_round_trip(family, tmp_path):
    model, x = build(family), family_images(family)
    vitkit.apply_(model, vitkit.PTQConfig(w_bits=8, a_bits=8, calib_images=4), calib=x)
    expected = run(model, x)
    save_artifact(model, None, None, tmp_path / "art")
    loaded = load_artifact(tmp_path / "art")
    assert quantizers(loaded)
    torch.testing.assert_close(run(loaded, x), expected, rtol=1e-5, atol=1e-5)


def test_w4_keeps_the_convolution_stem_at_8_bits_and_reloads(family, tmp_path):
    """A conv stem's first layer stays at 8-bit weights under W4 (the CNN PTQ setting); every other layer is at
    ``w_bits``; ``first_weight_bits`` overrides it; the artifact reloads to the same outputs."""
    model, x = build(family), family_images(family)
    first = next(n for n, role in quant_sites(model).items() if role == "embed")
    q = copy.deepcopy(model)
    vitkit.apply_(q, vitkit.PTQConfig(w_bits=4, a_bits=4, calib_images=4), calib=x)
    bits = {n: m.w_quant.bits for n, m in q.named_modules() if getattr(m, "w_quant", None) is not None}
    assert bits.pop(first) == 8 and set(bits.values()) == {4}
    save_artifact(q, None, None, tmp_path / "art")
    torch.testing.assert_close(run(load_artifact(tmp_path / "art"), x), run(q, x), rtol=1e-5, atol=1e-5)
    vitkit.apply_(model, vitkit.PTQConfig(w_bits=4, a_bits=4, calib_images=4, first_weight_bits=4), calib=x)
    assert model.get_submodule(first).w_quant.bits == 4


def test_prune_mlp_ratio_zero_is_identity(family):
    model, x = build(family), family_images(family)
    ref = run(model, x)
    vitkit.apply_(model, vitkit.PruneConfig(ratio=0.0, groups=("mlp",), importance="l1"))
    torch.testing.assert_close(run(model, x), ref, rtol=0, atol=0)


def test_pruned_neuron_is_a_zeroed_neuron(family):
    model, x = build(family), family_images(family)
    host = adapter_for(model)
    zeroed = copy.deepcopy(model)
    for i, (_, blk) in enumerate(host.blocks(zeroed)):
        lin = host.block_linears(blk, index=i)
        with torch.no_grad():
            lin["mlp_in"].weight[1].zero_()
            lin["mlp_in"].bias[1].zero_()  # GELU(0) = 0: the neuron contributes nothing
    for i, (_, blk) in enumerate(host.blocks(model)):
        n = host.block_linears(blk, index=i)["mlp_in"].out_features
        host.prune_mlp(blk, [j for j in range(n) if j != 1], index=i)
    assert host.describe(model).mlp_hidden == tuple(h - 1 for h in host.describe(zeroed).mlp_hidden)
    torch.testing.assert_close(run(model, x), run(zeroed, x), rtol=1e-5, atol=1e-5)


def test_pruned_head_is_a_zeroed_head(family):
    """Removing a head (its [q | k | v] rows, proj columns and attention-bias row) = zeroing its values."""
    model, x = build(family), family_images(family)
    host = adapter_for(model)
    zeroed = copy.deepcopy(model)
    for core in host.attention_cores(zeroed):
        attn = zeroed.get_submodule(core.name)
        if core.num_heads < 2:
            continue
        per_head, v = attn.qkv.out_features // core.num_heads, attn.val_dim
        with torch.no_grad():  # head 1's value rows → its output is 0, whatever its attention map
            attn.qkv.weight[per_head + per_head - v : 2 * per_head].zero_()
            attn.qkv.bias[per_head + per_head - v : 2 * per_head].zero_()
    pruned = 0
    for i, (_, blk) in enumerate(host.blocks(model)):
        h = host.attention_cores(model)[i].num_heads
        if h >= 2:
            host.prune_heads(blk, [j for j in range(h) if j != 1], index=i)
            pruned += 1
    assert pruned
    torch.testing.assert_close(run(model, x), run(zeroed, x), rtol=1e-5, atol=1e-5)


def _make_identity(block: nn.Module) -> None:
    """Turn an attention block into the identity: zero both residual branches' outputs (attention ``proj``, MLP
    ``fc2``) and, on TinyViT, make the depthwise ``local_conv`` + BN between them an identity too."""
    with torch.no_grad():
        for name in ("attn.proj", "token_mixer.proj", "mlp.fc2"):
            try:
                lin = block.get_submodule(name)
            except AttributeError:
                continue
            lin.weight.zero_()
            lin.bias.zero_()
        local = getattr(block, "local_conv", None)
        if local is not None:
            k = local.conv.kernel_size[0]
            local.conv.weight.zero_()
            local.conv.weight[:, 0, k // 2, k // 2] = 1.0
            local.bn.weight.copy_((local.bn.running_var + local.bn.eps).sqrt())
            local.bn.bias.copy_(local.bn.running_mean)


def test_pruned_block_is_an_identity_block(family):
    model, x = build(family, **TWO_BLOCKS[family]), family_images(family)
    host = adapter_for(model)
    last = len(host.blocks(model)) - 1
    reference = copy.deepcopy(model)
    _make_identity(host.blocks(reference)[last][1])
    host.keep_blocks(model, range(last))
    assert len(host.blocks(model)) == last
    torch.testing.assert_close(run(model, x), run(reference, x), rtol=1e-5, atol=1e-5)


def test_prune_blocks_transform_saves_and_loads(family, tmp_path):
    model, x = build(family, **TWO_BLOCKS[family]), family_images(family)
    depth = adapter_for(model).describe(model).depth
    cfg = vitkit.PruneConfig(ratio=0.02, groups=("blocks",), importance="l1")
    vitkit.apply_(model, cfg)
    assert adapter_for(model).describe(model).depth < depth
    expected = run(model, x)
    save_artifact(model, None, None, tmp_path / "art")
    torch.testing.assert_close(run(load_artifact(tmp_path / "art"), x), expected, rtol=1e-5, atol=1e-5)


def test_prune_heads_and_mlp_transform_saves_and_loads(family, tmp_path):
    model, x = build(family), family_images(family)
    before = adapter_for(model).describe(model)
    cfg = vitkit.PruneConfig(
        ratio=0.05, groups=("heads", "mlp"), importance="hessian", calib_images=4, calib_batch_size=2
    )
    vitkit.apply_(model, cfg, calib=x)
    after = adapter_for(model).describe(model)
    assert sum(after.num_heads) + sum(after.mlp_hidden) < sum(before.num_heads) + sum(before.mlp_hidden)
    expected = run(model, x)
    save_artifact(model, None, None, tmp_path / "art")
    torch.testing.assert_close(run(load_artifact(tmp_path / "art"), x), expected, rtol=1e-5, atol=1e-5)


def test_prune_mlp_transform_saves_and_loads(family, tmp_path):
    model, x = build(family), family_images(family)
    before = adapter_for(model).describe(model).mlp_hidden
    cfg = vitkit.PruneConfig(ratio=0.01, groups=("mlp",), importance="taylor", calib_images=4, calib_batch_size=2)
    vitkit.apply_(model, cfg, calib=x)
    after = adapter_for(model).describe(model).mlp_hidden
    assert sum(after) < sum(before)
    expected = run(model, x)
    save_artifact(model, None, None, tmp_path / "art")
    torch.testing.assert_close(run(load_artifact(tmp_path / "art"), x), expected, rtol=1e-5, atol=1e-5)


def test_lora_fold_back_is_exact(family, tmp_path):
    model, x = build(family), family_images(family)
    vitkit.apply_(model, vitkit.LoRAConfig(rank=2))
    adapted = [n for n, m in model.named_modules() if hasattr(m, "lora_B")]
    roles = adapter_for(model).linear_roles(model)
    assert adapted and {roles[n].role for n in adapted} == {"qkv", "attn_out", "mlp_in", "mlp_out"}
    with torch.no_grad():  # a trained update (B starts at zero)
        for n in adapted:
            model.get_submodule(n).lora_B.normal_(0, 0.05)
    expected = run(model, x)
    save_artifact(model, None, None, tmp_path / "lora")
    torch.testing.assert_close(run(load_artifact(tmp_path / "lora"), x), expected, rtol=1e-5, atol=1e-5)
    vitkit.apply_(model, vitkit.LoRAMergeConfig())
    assert not any(hasattr(m, "lora_B") for m in model.modules())
    torch.testing.assert_close(run(model, x), expected, rtol=1e-5, atol=1e-5)


def test_merge_identical_is_identity_and_ties_mixes(family):
    a, b, x = build(family, seed=0), build(family, seed=1), family_images(family)
    sd_a = {k: v.clone() for k, v in a.state_dict().items()}
    same = vitkit.merge([sd_a, sd_a], vitkit.AverageConfig())
    assert all(torch.equal(same[k].to(v.dtype), v) for k, v in sd_a.items())
    ties = vitkit.merge([sd_a, b.state_dict()], vitkit.TIESConfig(density=0.5), base=sd_a)
    model = build(family)
    model.load_state_dict({k: v.to(sd_a[k].dtype) for k, v in ties.items()})
    assert torch.isfinite(run(model, x)).all()
    regmean = vitkit.merge([sd_a, b.state_dict()], vitkit.RegMeanConfig(), model=build(family), calib=x)
    assert set(regmean) == set(sd_a)
    with pytest.raises(UnsupportedModelError, match="PLeaS.*methods that apply: ptq"):
        vitkit.merge([sd_a, b.state_dict()], vitkit.PLeaSConfig(), model=build(family), calib=x)


def test_onnx_export_parity(family, tmp_path):
    pytest.importorskip("onnxruntime")
    from vitkit.deploy import deploy

    model, x = build(family), family_images(family, 2)
    runner = deploy(model, tmp_path, runtime="ort-fp32", example=x)
    torch.testing.assert_close(runner(x), run(model, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("runtime", ["ort-int8", "torch-w8a8"])
def test_int8_deployment_agrees_with_float(family, runtime, tmp_path):
    if runtime.startswith("ort"):
        pytest.importorskip("onnxruntime")
    from vitkit.deploy import deploy

    model, x = build(family), family_images(family)
    try:
        runner = deploy(model, tmp_path, runtime=runtime, calib=x, example=x[:2])
    except vitkit.errors.DeployError as exc:  # e.g. no int8 GEMM kernel on this CPU
        pytest.skip(str(exc))
    ref, got = run(model, x), run(runner, x)
    cos = nn.functional.cosine_similarity(got.flatten(), ref.flatten(), dim=0)
    assert cos > 0.98, f"{runtime}: cos {cos:.4f} to float"


def test_adapter_branch_reads_the_normalized_input(family, tmp_path):
    """AdaptFormer (Eq. 4–5): ``mlp(x) + s·up(ReLU(down(h)))`` with ``h`` the normalized stream fc1 reads —
    EfficientFormer's Mlp sits after norm2 (``h = x``); TinyViT's NormMlp normalizes inside (``h = norm(x)``)."""
    model, x = build(family), family_images(family)
    ref = run(model, x)
    name = adapter_for(model).blocks(model)[0][0]
    plain = copy.deepcopy(model.get_submodule(f"{name}.mlp"))
    vitkit.apply_(model, vitkit.AdapterConfig(bottleneck=4, scale=0.5))
    torch.testing.assert_close(run(model, x), ref, rtol=0, atol=0)  # W_up starts at zero
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "adapter_up" in n:
                p.normal_(0, 0.1)
    mlp, seen = model.get_submodule(f"{name}.mlp"), {}
    hooks = [
        mlp.register_forward_hook(lambda _m, args, out: seen.update(x=args[0], out=out)),
        mlp.fc1.register_forward_pre_hook(lambda _m, args: seen.update(h=args[0])),
    ]
    try:
        expected = run(model, x)
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        branch = mlp.adapter_up(torch.relu(mlp.adapter_down(seen["h"])))
        torch.testing.assert_close(seen["out"], plain(seen["x"]) + mlp.adapter_scale * branch)
        normed = plain.norm(seen["x"]) if family == "tiny_vit" else seen["x"]
        torch.testing.assert_close(seen["h"], normed)
    assert not torch.allclose(expected, ref)
    save_artifact(model, None, None, tmp_path / "art")
    torch.testing.assert_close(run(load_artifact(tmp_path / "art"), x), expected, rtol=1e-5, atol=1e-5)


def test_ptq_model_deploys_as_qdq_int8(family, tmp_path):
    """The calibrated scales (convs per channel, attention matmul inputs) as ONNX QDQ: agrees with fake quant."""
    pytest.importorskip("onnxruntime")
    from vitkit.deploy import deploy

    model, x = build(family), family_images(family)
    vitkit.apply_(model, vitkit.PTQConfig(w_bits=8, a_bits=8, calib_images=4, reconstruct_iters=2), calib=x)
    fake = run(model, x)
    runner = deploy(model, tmp_path, runtime="ort-qdq", example=x[:2])
    got = run(runner, x)
    assert nn.functional.cosine_similarity(got.flatten(), fake.flatten(), dim=0) > 0.999
    assert (got.argmax(-1) == fake.argmax(-1)).float().mean() >= 0.75


REFUSED = {
    "tome": ({"r": 2}, "token reduction"),
    "evit": ({"keep_rate": 0.7}, "token reduction"),
    "pitome": ({"ratio": 0.8}, "token reduction"),
    "hiprune": ({"keep": 0.5}, "token reduction"),
    "random_drop": ({"r": 2}, "token reduction"),
    "early_exit": ({"exits": [0], "threshold": 0.2, "train": {"epochs": 0}}, "early exit"),
    "prompt": ({"num_tokens": 2}, "prompt tokens"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refusals_say_why_and_what_applies(family, name):
    model, x = build(family), family_images(family)
    setting, words = REFUSED[name]
    spec = vitkit.list_transforms(name)[0]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsupportedModelError) as err:
        vitkit.apply_(model, spec.config_cls(**setting), calib=x)
    msg = str(err.value)
    assert words in msg and type(model).__name__ in msg and "methods that apply: ptq" in msg, msg
    assert set(model.state_dict()) == set(state) and all(
        torch.equal(v, state[k]) for k, v in model.state_dict().items()
    )


def test_integer_only_path_is_refused_by_name(family):
    from vitkit.quant import to_integer

    model, x = build(family), family_images(family)
    vitkit.apply_(model, vitkit.PTQConfig(calib_images=4), calib=x)
    with pytest.raises(UnsupportedModelError, match="to_integer"):
        to_integer(model)


class Mystery(nn.Module):
    """A layer no adapter knows."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


@pytest.mark.parametrize("method", ["ptq", "lora", "prune"])
def test_unhandled_layer_is_named_and_nothing_is_patched(family, method):
    model, x = build(family), family_images(family)
    name, blk = adapter_for(model).blocks(model)[-1]
    blk.mlp = Mystery(blk.mlp)
    classes = {n: type(m) for n, m in model.named_modules()}
    cfg = {
        "ptq": vitkit.PTQConfig(calib_images=4),
        "lora": vitkit.LoRAConfig(rank=2),
        "prune": vitkit.PruneConfig(ratio=0.01, groups=("mlp",), importance="l1"),
    }[method]
    with pytest.raises(UnsupportedModelError, match=rf"{name}\.mlp is a Mystery"):
        vitkit.apply_(model, cfg, calib=x)
    assert {n: type(m) for n, m in model.named_modules()} == classes
