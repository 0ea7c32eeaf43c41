"""EVA-02 (timm ``Eva``: RoPE, SwiGLU, EvaBlock/EvaAttention) through vitkit's EVA adapter, on tiny random-init
models: each method's defining property, RoPE positions tracked through token merging, and named refusals."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import vitkit
from vitkit.adapters import adapter_for, run_forward
from vitkit.adapters.runtime import host_run
from vitkit.adapters.timm_eva_forward import rope_at, token_positions
from vitkit.artifact import load_artifact, save_artifact
from vitkit.errors import UnsupportedModelError
from vitkit.ops.token_merging import bipartite_soft_matching
from vitkit.quant.modules import quantizers, set_quant_enabled

from ..conftest import family_images, make_family

#: tiny EVA-02 variants: the packed SwiGLU of eva02 tiny/small, the split SwiGLU with a hidden norm of base/large
#: (scale_mlp), the split one without a norm (swiglu_align_to), LayerScale + registers, separate q/k/v projections
VARIANTS = {
    "packed": {},
    "split_norm": {"scale_mlp": True},
    "split": {"swiglu_align_to": 8},
    "ls_reg": {"init_values": 0.1, "num_reg_tokens": 2},
    "separate": {"qkv_fused": False, "scale_mlp": True},  # EVA-02 base/large: q_proj/k_proj/v_proj
}


def eva(variant: str = "packed", seed: int = 0) -> torch.nn.Module:
    """A tiny EVA-02 whose head is scaled up (timm initialises it at 1e-3: logits would hide every difference)."""
    model = make_family("eva02", seed=seed, **VARIANTS[variant])
    with torch.no_grad():
        model.head.weight.mul_(1000.0)
    return model


def run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture
def x():
    return family_images("eva02")


# -- the adapter ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_host_forward_is_bit_identical(variant, x):
    model = eva(variant)
    r = host_run(model)
    with torch.no_grad():
        assert torch.equal(r.logits(r.tokens(x)), model(x))
        assert torch.equal(run_forward(model, x), model(x))


def test_describe_names_eva_features():
    info = adapter_for(eva("split_norm")).describe(eva("split_norm"))
    assert {"rope", "glu_mlp", "mlp_norm", "avg_pool"} <= info.features
    assert info.mlp_hidden == (128,) * 3 and info.num_heads == (3,) * 3


def test_rope_at_the_grid_is_timms_embedding(x):
    model = eva()
    assert torch.equal(rope_at(model.rope, token_positions(model, x))[0, 0], model.rope.get_embed())


def test_roles_pair_swiglu_gate_and_value():
    host, model = adapter_for(eva("split")), eva("split")
    roles = host.linear_roles(model)
    assert roles["blocks.0.mlp.fc1_g"].role == roles["blocks.0.mlp.fc1_x"].role == "mlp_in"
    pairs = [p for p in host.norm_linear_pairs(model) if p.norm == "blocks.0.norm2"]
    assert pairs[0].linears == ("blocks.0.mlp.fc1_g", "blocks.0.mlp.fc1_x")


# -- unsupported features: refused by name, nothing touched ------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "named"),
    [
        ({"use_post_norm": True}, "blocks.0"),
        ({"rope_type": "mixed"}, "rope"),
        ({"global_pool": "map"}, "attn_pool"),
        ({"dynamic_img_size": True}, "patch_embed"),
    ],
)
def test_unhandled_eva_is_refused_by_name_and_left_untouched(kw, named, x):
    model = make_family("eva02", **kw)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    classes = [type(m) for m in model.modules()]
    for cfg in (
        vitkit.ToMeConfig(r=2),
        vitkit.PTQConfig(calib_images=4),
        vitkit.PruneConfig(ratio=0.2),
        vitkit.LoRAConfig(rank=2),
        vitkit.PromptConfig(num_tokens=2),
        vitkit.EarlyExitConfig(exits=[0], train={"epochs": 0}),
    ):
        with pytest.raises(UnsupportedModelError, match=named.replace(".", r"\.")):
            vitkit.apply_(model, cfg, calib=x)
    assert [type(m) for m in model.modules()] == classes
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# -- ToMe: identity at r=0, RoPE at the tracked positions for r>0 -------------------------------------------------
def test_tome_r0_is_exact(x):
    model = eva()
    ref = run(copy.deepcopy(model), x)
    vitkit.apply_(model, vitkit.ToMeConfig(r=0))
    assert torch.equal(run(model, x), ref)


def _reference_tome(model: torch.nn.Module, x: torch.Tensor, r: int, *, track: bool = True) -> torch.Tensor:
    """ToMe on EVA written out independently: per block attention with RoPE (interleaved pairs, RoFormer Eq. 34)
    computed *here* from each token's position; merged tokens sit at the size-weighted mean of their sources'
    patch positions (``track=False``: at their destination's own position instead — the wrong answer)."""
    P, rope = model.num_prefix_tokens, model.rope
    (gh, gw), (rh, rw) = rope.feat_shape, rope.ref_feat_shape
    h = model.norm_pre(model._pos_embed(model.patch_embed(x))[0])  # [B, N, D]
    B = h.shape[0]
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    pos = torch.stack([rows, cols], -1).reshape(1, -1, 2).float().expand(B, -1, -1)  # [B, T, 2] patch (row, col)
    size = torch.ones(B, h.shape[1], 1)
    for blk in model.blocks:
        a = blk.attn
        y = blk.norm1(h)
        qkv = F.linear(y, a.qkv.weight, torch.cat([a.q_bias, torch.zeros_like(a.q_bias), a.v_bias]))
        q, k, v = qkv.reshape(B, -1, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)  # [B, H, N, d]
        metric = k.mean(1)
        coord = pos * torch.tensor([rh / gh, rw / gw])  # EVA's ref_feat_shape rescale of the grid
        ang = (coord[..., None] * rope.bands).flatten(-2).repeat_interleave(2, -1)[:, None]  # [B, 1, T, d]

        def rotate(t, ang=ang):
            pair = torch.stack([-t[..., 1::2], t[..., ::2]], -1).reshape(t.shape)  # (t0, t1) → (−t1, t0)
            return torch.cat([t[:, :, :P], t[:, :, P:] * ang.cos() + pair[:, :, P:] * ang.sin()], 2)

        logits = rotate(q) @ rotate(k).transpose(-2, -1) * a.scale + size.log().transpose(1, 2)[:, None]
        h = h + a.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(B, -1, a.num_heads * a.head_dim))
        red = bipartite_soft_matching(metric, min(r, (h.shape[1] - P) // 2), P)
        full = torch.cat([torch.zeros(B, P, 2), pos], 1)
        if track:
            pos = red.merge(full, size)[0][:, P:]  # size-weighted mean of the sources' positions
        else:
            pos = torch.stack([red.gather_index(full[..., 0]), red.gather_index(full[..., 1])], -1)[:, P:]
        h, size = red.merge(h, size)
        h = h + blk.mlp(blk.norm2(h))
    feats = model.norm(h)
    w = size[:, P:]
    return model.head(model.fc_norm((feats[:, P:] * w).sum(1) / w.sum(1)))


def test_tome_applies_rope_at_the_tracked_positions(x):
    model = eva()
    with torch.no_grad():  # sharper attention (random init is near-uniform), so that positions matter
        for blk in model.blocks:
            blk.attn.qkv.weight[: 2 * blk.attn.qkv.in_features].mul_(4.0)
    with torch.no_grad():
        expected = _reference_tome(model, x, r=3)
        untracked = _reference_tome(model, x, r=3, track=False)
    vitkit.apply_(model, vitkit.ToMeConfig(r=3))
    out = run(model, x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert (out - untracked).abs().max() > 1e-4  # 10× the tolerance: the test sees where merged tokens are rotated


@pytest.mark.parametrize(
    "cfg",
    [vitkit.EViTConfig(keep_rate=0.7), vitkit.PiToMeConfig(ratio=0.8), vitkit.HiPruneConfig(keep=0.5)],
    ids=["evit", "pitome", "hiprune"],
)
def test_other_token_methods_run_and_reload(cfg, x, tmp_path):
    model = eva()
    vitkit.apply_(model, cfg)
    out = run(model, x)
    assert torch.isfinite(out).all()
    save_artifact(model, None, None, tmp_path / "a")
    assert torch.equal(run(load_artifact(tmp_path / "a"), x), out)


# -- PTQ ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["packed", "split_norm", "separate"])
def test_ptq_repq_reparameterization_is_exact_in_float(variant, x):
    model = eva(variant)
    ref = run(copy.deepcopy(model), x)
    decisions = vitkit.apply_(model, vitkit.PTQConfig(method="repq", calib_images=4), calib=x).steps[-1].decisions
    assert decisions["reparameterized"], "RepQ-ViT folded no LayerNorm"
    core = model.blocks[0].attn
    assert type(core).__name__ == "QuantEvaAttention" and hasattr(core, "q_quant")
    if variant == "split_norm":
        assert hasattr(model.blocks[0].mlp.fc1_g, "a_quant") and hasattr(model.blocks[0].mlp.fc1_x, "a_quant")
    quantized = run(model, x)
    set_quant_enabled(model, False)
    torch.testing.assert_close(run(model, x), ref, rtol=1e-4, atol=1e-4)
    set_quant_enabled(model, True)
    assert quantizers(model) and not torch.equal(quantized, ref)


def test_ptq_then_tome_reloads(x, tmp_path):
    model = eva()
    vitkit.apply_(model, [vitkit.PTQConfig(calib_images=4), vitkit.ToMeConfig(r=2)], calib=x)
    out = run(model, x)
    save_artifact(model, None, None, tmp_path / "a")
    torch.testing.assert_close(run(load_artifact(tmp_path / "a"), x), out, rtol=1e-5, atol=1e-5)


# -- pruning -----------------------------------------------------------------------------------------------------
def _zero_neurons(model, block: int, drop: list[int]) -> None:
    mlp = model.blocks[block].mlp
    n = mlp.fc2.in_features
    with torch.no_grad():
        for j in drop:
            gate_value = [("fc1_g", j), ("fc1_x", j)] if hasattr(mlp, "fc1_g") else [("fc1", j), ("fc1", n + j)]
            for lin, row in gate_value:
                getattr(mlp, lin).weight[row] = 0
                getattr(mlp, lin).bias[row] = 0
            mlp.fc2.weight[:, j] = 0


@pytest.mark.parametrize("variant", ["packed", "split"])
def test_pruned_swiglu_neuron_equals_zeroed_gate_and_value(variant, x):
    model, drop = eva(variant), [0, 5, 77]
    zeroed = copy.deepcopy(model)
    _zero_neurons(zeroed, 1, drop)
    keep = [j for j in range(model.blocks[1].mlp.fc2.in_features) if j not in drop]
    adapter_for(model).prune_mlp(model.blocks[1], keep, index=1)
    assert model.blocks[1].mlp.fc2.in_features == len(keep)
    torch.testing.assert_close(run(model, x), run(zeroed, x), rtol=1e-5, atol=1e-5)


def test_pruning_slices_the_mlp_norm_with_its_neurons(x):
    model = eva("split_norm")
    mlp = model.blocks[0].mlp
    keep = list(range(0, 128, 2))
    w = mlp.norm.weight.detach()[keep].clone()
    adapter_for(model).prune_mlp(model.blocks[0], keep, index=0)
    assert mlp.fc1_g.out_features == mlp.fc1_x.out_features == mlp.fc2.in_features == 64
    assert torch.equal(mlp.norm.weight, w) and tuple(mlp.norm.normalized_shape) == (64,)
    assert torch.isfinite(run(model, x)).all()


@pytest.mark.parametrize("variant", ["ls_reg", "separate"])
def test_pruned_head_equals_zeroed_head(variant, x):
    model = eva(variant)
    zeroed = copy.deepcopy(model)
    d = zeroed.blocks[2].attn.head_dim
    with torch.no_grad():
        zeroed.blocks[2].attn.proj.weight[:, d : 2 * d] = 0
    adapter_for(model).prune_heads(model.blocks[2], [0, 2], index=2)
    attn = model.blocks[2].attn
    assert attn.num_heads == 2 and (attn.q_bias if attn.qkv is not None else attn.q_proj.bias).shape == (2 * d,)
    torch.testing.assert_close(run(model, x), run(zeroed, x), rtol=1e-5, atol=1e-5)


def test_prune_ratio_zero_is_identity_and_pruned_model_reloads(x, tmp_path):
    model = eva()
    ref = run(copy.deepcopy(model), x)
    vitkit.apply_(model, vitkit.PruneConfig(ratio=0.0, importance="l1"))
    assert torch.equal(run(model, x), ref)
    model = eva()
    vitkit.apply_(model, vitkit.PruneConfig(ratio=0.3, importance="l1"))
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in eva().parameters())
    out = run(model, x)
    save_artifact(model, None, None, tmp_path / "a")
    assert torch.equal(run(load_artifact(tmp_path / "a"), x), out)


# -- LoRA ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("variant", "layer"), [("packed", "qkv"), ("separate", "v_proj")])
def test_lora_reaches_qkv_and_folds_back_exactly(variant, layer, x):
    model = eva(variant)
    ref = run(copy.deepcopy(model), x)
    vitkit.apply_(model, vitkit.LoRAConfig(rank=2))
    assert f"blocks.0.attn.{layer}" in [n for n, m in model.named_modules() if hasattr(m, "lora_A")]
    torch.testing.assert_close(run(model, x), ref, rtol=1e-5, atol=1e-5)  # B = 0: the base model
    with torch.no_grad():
        getattr(model.blocks[0].attn, layer).lora_B.normal_(0, 0.5)  # only this projection's update: must show
    adapted = run(model, x)
    assert (adapted - ref).abs().max() > 1e-3
    vitkit.apply_(model, vitkit.LoRAMergeConfig())
    assert type(getattr(model.blocks[0].attn, layer)) is torch.nn.Linear
    torch.testing.assert_close(run(model, x), adapted, rtol=1e-5, atol=1e-5)


# -- early exit ----------------------------------------------------------------------------------------------------
def test_early_exit_at_threshold_one_is_identity(x, tmp_path):
    model = eva()
    ref = run(copy.deepcopy(model), x)
    vitkit.apply_(model, vitkit.EarlyExitConfig(exits=[0, 1], threshold=1 - 1e-6, train=dict(epochs=0)))
    assert torch.equal(run(model, x), ref)


def test_early_exit_on_tome_reloads(x, tmp_path):
    model = eva()
    steps = [vitkit.ToMeConfig(r=2), vitkit.EarlyExitConfig(exits=[0], threshold=0.2, train={"epochs": 0})]
    vitkit.apply_(model, steps)
    out = run(model, x)
    save_artifact(model, None, None, tmp_path / "a")
    torch.testing.assert_close(run(load_artifact(tmp_path / "a"), x), out, rtol=1e-5, atol=1e-5)


# -- merging ---------------------------------------------------------------------------------------------------------
def test_merging_identical_models_is_identity(x):
    model = eva()
    sd = model.state_dict()
    base = {k: v * 0.5 for k, v in sd.items()}
    for cfg in (vitkit.AverageConfig(), vitkit.TIESConfig(density=1.0)):
        merged = vitkit.merge([sd, sd], cfg, base=None if isinstance(cfg, vitkit.AverageConfig) else base)
        other = eva(seed=1)
        other.load_state_dict(merged)
        torch.testing.assert_close(run(other, x), run(model, x), rtol=1e-5, atol=1e-5)


# -- ONNX ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [[], [vitkit.ToMeConfig(r=3)]], ids=["float", "tome"])
def test_onnx_export_parity(steps, x, tmp_path):
    pytest.importorskip("onnxruntime")
    from vitkit.deploy import export_model

    model = eva()
    vitkit.apply_(model, steps)
    res = export_model(model, tmp_path / "out", data=[(img, 0) for img in x], images=4, bench=False)
    assert res.max_abs_diff <= 1e-4 and res.agreement == 1.0


# -- visual prompts ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["packed", "ls_reg"])
def test_prompts_are_prefix_tokens_that_rope_skips(variant, x, tmp_path):
    """Prompts no token attends to leave the output unchanged — only if RoPE still rotates exactly the patch
    tokens (the prefix count grew on every attention core) and pooling skips them."""
    model = eva(variant)
    ref = run(copy.deepcopy(model), x)
    start = model.num_prefix_tokens
    vitkit.apply_(model, vitkit.PromptConfig(num_tokens=2, deep=False))
    assert model.num_prefix_tokens == start + 2 and all(b.attn.num_prefix_tokens == start + 2 for b in model.blocks)
    n = start + 2 + 16
    mask = torch.ones(n, n, dtype=torch.bool)
    mask[:, start : start + 2] = False  # nobody reads the prompts
    mask[start : start + 2, start : start + 2] = True  # (their own rows stay well defined)
    with torch.no_grad():
        torch.testing.assert_close(model(x, attn_mask=mask), ref, rtol=1e-5, atol=1e-5)
    vitkit.apply_(model, vitkit.ToMeConfig(r=2))
    out = run(model, x)
    save_artifact(model, None, None, tmp_path / "a")
    assert torch.equal(run(load_artifact(tmp_path / "a"), x), out)


def test_ptq_of_qkv_without_its_attention_core_sees_qkv(x):
    """Quantizing ``qkv`` but skipping the attention core: timm's fused path would read ``qkv.weight`` and bypass
    the quantized module; the adapter routes the call through it, so every quantizer calibrates."""
    model = eva()
    vitkit.apply_(model, vitkit.PTQConfig(calib_images=4, skip=["blocks.*.attn"]), calib=x)
    assert type(model.blocks[0].attn).__name__ == "EvaAttention" and hasattr(model.blocks[0].attn.qkv, "w_quant")
    assert torch.isfinite(run(model, x)).all()


def test_latency_costs_are_measured_on_eva_blocks():
    """``target="latency"`` pruning times each block's branches and pruned copies through the adapter (no timing
    is asserted: only that every block gets its costs)."""
    from vitkit.prune.latency import measure_block_costs

    costs = measure_block_costs(eva(), repeats=1)
    assert len(costs) == 3


def test_integer_only_inference_is_refused_by_name(x):
    from vitkit.quant import to_integer

    model = eva()
    vitkit.apply_(model, vitkit.PTQConfig(calib_images=4), calib=x)
    with pytest.raises(UnsupportedModelError, match="glu_mlp|RoPE"):
        to_integer(model)
