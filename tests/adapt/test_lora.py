"""LoRA: default targets, identity at init, folding back to a plain timm model, bad input, artifacts, order."""

import pytest
import torch
import torch.nn as nn

import vitkit
from vitkit import ConfigError, OrderError
from vitkit.adapt import AdapterConfig, LoRAConfig, LoRALinear, PromptConfig, lora_modules
from vitkit.adapt.lora import DEFAULT_TARGETS
from vitkit.api import check_order, merge_back

from ..conftest import make_tiny


def _randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.1)


def test_default_targets_are_attention_and_mlp_linears_only(tiny_model, images):
    before = tiny_model(images)
    vitkit.apply_(tiny_model, LoRAConfig(rank=4))
    names = sorted(lora_modules(tiny_model))
    expected = sorted(f"blocks.{i}.{m}" for i in range(3) for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"))
    assert names == expected and len(DEFAULT_TARGETS) == 4
    assert not isinstance(tiny_model.head, LoRALinear) and isinstance(tiny_model.patch_embed.proj, nn.Conv2d)
    torch.testing.assert_close(tiny_model(images), before, rtol=0, atol=0)  # B = 0: identity at start
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{w}" for n in names for w in "AB"} | {"head.weight", "head.bias"}


def test_merge_back_gives_plain_model_same_keys_same_outputs(tiny_variant, images):
    _, model = tiny_variant
    keys = list(model.state_dict())
    classes = {n: type(m) for n, m in model.named_modules()}
    vitkit.apply_(model, LoRAConfig(rank=4, alpha=8))
    _randomize(model)
    adapted = model(images).detach()
    assert "blocks.0.attn.qkv.lora_A" in model.state_dict()
    out = merge_back(model)
    assert out is model and list(model.state_dict()) == keys
    assert {n: type(m) for n, m in model.named_modules()} == classes
    assert all(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(model(images), adapted, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(adapted, make_tiny(tiny_variant[0])(images), atol=1e-4)  # LoRA did change it
    with pytest.raises(ConfigError, match="already merged back"):
        merge_back(model)


def test_targets_are_globs_over_linear_names(tiny_model):
    vitkit.apply_(tiny_model, LoRAConfig(rank=2, targets=["blocks.1.attn.*", "head"]))
    assert sorted(lora_modules(tiny_model)) == ["blocks.1.attn.proj", "blocks.1.attn.qkv", "head"]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: LoRAConfig(rank=0), "rank must be a positive int"),
        (lambda: LoRAConfig(rank=-2), "rank must be a positive int"),
        (lambda: LoRAConfig(alpha=0), "alpha must be a positive"),
        (lambda: LoRAConfig(dropout=1.0), "dropout must be in"),
        (lambda: LoRAConfig(variant="dora"), r"variant must be one of \['lora', 'hira'\]"),
        (lambda: LoRAConfig(init="gaussian"), r"init must be one of \['lora', 'pissa'\]"),
        (lambda: LoRAConfig(init="pissa", variant="hira"), "init='pissa' applies to variant='lora' only"),
    ],
)
def test_bad_config(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_bad_input_on_a_model(tiny_model, images):
    before = tiny_model(images)
    with pytest.raises(ConfigError, match=r"rank=49 is larger than blocks.0.attn.qkv \(48→144\); use rank <= 48"):
        vitkit.apply_(tiny_model, LoRAConfig(rank=49))
    with pytest.raises(ConfigError, match="'blocks.9.attn.qkv' matches no linear layers"):
        vitkit.apply_(tiny_model, LoRAConfig(targets=["blocks.9.attn.qkv"]))
    with pytest.raises(ConfigError, match="matches no linear layers"):
        vitkit.apply_(tiny_model, LoRAConfig(targets=["patch_embed.proj"]))  # a Conv2d, never a LoRA target
    with pytest.raises(ConfigError, match="has no LoRA layers to merge"):
        merge_back(tiny_model)
    torch.testing.assert_close(tiny_model(images), before, rtol=0, atol=0)  # failures left it untouched
    assert not lora_modules(tiny_model)


def test_mixing_adapter_kinds_is_refused_naming_the_present_kind(tiny_model):
    vitkit.apply_(tiny_model, LoRAConfig(rank=2))
    with pytest.raises(ConfigError, match="model already has LoRA; cannot add AdaptFormer adapters"):
        vitkit.apply_(tiny_model, AdapterConfig(bottleneck=4))
    with pytest.raises(ConfigError, match="model already has LoRA; cannot add visual prompts"):
        vitkit.apply_(tiny_model, PromptConfig(num_tokens=2))
    with pytest.raises(ConfigError, match="adding LoRA twice"):
        vitkit.apply_(tiny_model, LoRAConfig(rank=2))
    other = make_tiny()
    vitkit.apply_(other, PromptConfig(num_tokens=2))
    with pytest.raises(ConfigError, match=r"model already has visual prompts \(VPT\); cannot add LoRA"):
        vitkit.apply_(other, LoRAConfig(rank=2))


def test_dry_run_changes_nothing(tiny_model):
    report = vitkit.apply_(tiny_model, LoRAConfig(rank=4), dry_run=True)
    assert len(report.steps[0].decisions["modules"]) == 12 and not lora_modules(tiny_model)


def test_hira_is_identity_at_init_high_rank_and_folds_back_exactly(tiny_model, images):
    base = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    before = tiny_model(images)
    vitkit.apply_(tiny_model, LoRAConfig(rank=2, alpha=4, variant="hira"))
    torch.testing.assert_close(tiny_model(images), before, rtol=0, atol=0)
    qkv = tiny_model.blocks[0].attn.qkv
    assert qkv.lora_hadamard and "hira" in repr(qkv)
    _randomize(tiny_model)
    w0, a, b = qkv.weight.detach().clone(), qkv.lora_A.detach().clone(), qkv.lora_B.detach().clone()
    adapted = tiny_model(images).detach()
    merge_back(tiny_model)
    torch.testing.assert_close(tiny_model(images), adapted, rtol=1e-5, atol=1e-5)
    delta = tiny_model.blocks[0].attn.qkv.weight.detach() - base["blocks.0.attn.qkv.weight"]
    torch.testing.assert_close(delta, 2.0 * w0 * (b @ a), rtol=1e-5, atol=1e-6)  # scale α/r = 2, HiRA update
    assert int(torch.linalg.matrix_rank(delta)) > 2  # same parameters as rank-2 LoRA, a higher-rank update
    assert list(tiny_model.state_dict()) == list(base)


def test_hira_refuses_peft_export(tmp_path, tiny_model):
    from vitkit.interop import export_peft

    vitkit.apply_(tiny_model, LoRAConfig(rank=2, variant="hira"))
    with pytest.raises(ConfigError, match="plain LoRA only; this model uses HiRA"):
        export_peft(tiny_model, tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


def test_pissa_starts_at_the_principal_part_and_folds_back_exactly(tiny_model, images):
    base = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    before = tiny_model(images)
    vitkit.apply_(tiny_model, LoRAConfig(rank=2, alpha=4, init="pissa"))
    torch.testing.assert_close(tiny_model(images), before, rtol=1e-5, atol=1e-5)  # W_res + s·BA = W0
    qkv = tiny_model.blocks[0].attn.qkv
    assert qkv.lora_init == "pissa" and "pissa" in repr(qkv)
    w0 = base["blocks.0.attn.qkv.weight"]
    u, sv, vh = torch.linalg.svd(w0, full_matrices=False)
    principal = 2.0 * qkv.lora_B.detach() @ qkv.lora_A.detach()  # scale α/r = 2
    torch.testing.assert_close(principal, u[:, :2] @ torch.diag(sv[:2]) @ vh[:2], rtol=1e-4, atol=1e-5)
    residual_sv = torch.linalg.svdvals(qkv.weight.detach())  # the frozen weight lost its top-2 directions
    torch.testing.assert_close(residual_sv[: len(sv) - 2], sv[2:], rtol=1e-4, atol=1e-5)
    assert not torch.equal(qkv.lora_B, torch.zeros_like(qkv.lora_B))  # unlike LoRA, B does not start at 0
    with torch.no_grad():
        qkv.lora_B.add_(0.05)  # training moved the principal directions
    adapted = tiny_model(images).detach()
    merge_back(tiny_model)
    torch.testing.assert_close(tiny_model(images), adapted, rtol=1e-5, atol=1e-5)
    assert list(tiny_model.state_dict()) == list(base)
    assert not torch.allclose(tiny_model.blocks[0].attn.qkv.weight, w0, atol=1e-4)


def test_pissa_exports_to_peft_as_a_rank_2r_lora_on_the_original_weights(tmp_path, images):
    import json

    from vitkit.interop import export_peft, import_peft

    model = make_tiny("vit", seed=0)
    vitkit.apply_(model, LoRAConfig(rank=2, alpha=4, init="pissa"))
    _randomize(model, seed=5)  # "trained" B
    ref = model(images).detach()
    out = export_peft(model, tmp_path / "peft")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8.0  # rank 2r, same scale α/r = 2
    original = make_tiny("vit", seed=0)  # the untouched W0, not the residual
    import_peft(original, out)
    torch.testing.assert_close(original(images), ref, rtol=1e-5, atol=1e-5)
    merge_back(model)
    assert not any("lora" in k for k in model.state_dict())  # the start buffers go with the factors


@pytest.mark.parametrize("merged", [False, True])
@pytest.mark.parametrize("kind", [{}, {"variant": "hira"}, {"init": "pissa"}])
def test_artifact_round_trip(tmp_path, images, merged, kind):
    model = make_tiny("registers")
    keys = list(model.state_dict())
    vitkit.apply_(model, LoRAConfig(rank=3, alpha=6, **kind))
    _randomize(model, seed=3)
    if merged:
        merge_back(model)
    ref = model(images).detach()
    vitkit.save_artifact(model, None, None, tmp_path / "a")
    loaded = vitkit.load(tmp_path / "a")
    torch.testing.assert_close(loaded(images), ref, rtol=1e-6, atol=1e-6)
    assert (list(loaded.state_dict()) == keys) is merged
    assert bool(lora_modules(loaded)) is not merged


def test_kinds_let_a_recipe_adapt_train_fold_then_quantize():
    kinds = {s.name: s.kind for s in vitkit.list_transforms()}
    assert kinds["lora"] == kinds["adapter"] == kinds["prompt"] == "structure"
    assert kinds["finetune"] == kinds["lora_merge"] == "weights"
    steps = ["lora", "finetune", "lora_merge", "ptq", "tome"]
    check_order([(s, kinds.get(s, {"ptq": "numerics", "tome": "runtime"}.get(s))) for s in steps])
    with pytest.raises(OrderError, match="'lora_merge' \\(weights\\) cannot come after 'ptq'"):
        check_order([("lora", "structure"), ("ptq", "numerics"), ("lora_merge", "weights")])


def test_quantizing_unfolded_lora_names_the_fix():
    from vitkit.errors import UnsupportedModelError

    model = make_tiny()
    vitkit.apply_(model, vitkit.LoRAConfig(rank=2))
    with pytest.raises(UnsupportedModelError, match=r"LoRALinear.*fold LoRA first"):
        vitkit.apply_(model, vitkit.PTQConfig(calib_images=4), calib=torch.randn(4, 3, 32, 32))


def test_pruning_unfolded_lora_is_refused():
    from vitkit.errors import UnsupportedModelError

    model = make_tiny()
    vitkit.apply_(model, vitkit.LoRAConfig(rank=2))
    with pytest.raises(UnsupportedModelError, match=r"LoRALinear.*prune before adapting"):
        vitkit.apply_(model, vitkit.PruneConfig(ratio=0.3, importance="l1"))
    assert lora_modules(model)  # rolled back: the LoRA layers are still there


def test_pissa_init_math_and_bad_input():
    from vitkit.ops.lora import pissa_init

    w = torch.randn(12, 8, generator=torch.Generator().manual_seed(0))
    kept = w.clone()
    a, b, res = pissa_init(w, 3, 0.5)
    assert a.shape == (3, 8) and b.shape == (12, 3) and torch.equal(w, kept)  # input untouched
    torch.testing.assert_close(res + 0.5 * b @ a, w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.linalg.matrix_rank(w - res), torch.tensor(3))
    with pytest.raises(ValueError, match="0 < rank <= 8"):
        pissa_init(w, 9, 1.0)
    with pytest.raises(ValueError, match="scale must be > 0"):
        pissa_init(w, 2, 0.0)


def test_default_targets_come_from_the_adapters_linear_roles(tiny_variant):
    from vitkit.adapt.lora import default_targets, linear_names
    from vitkit.configs import select_names

    _, model = tiny_variant
    as_globs = select_names(linear_names(model), DEFAULT_TARGETS, (), what="linear layers")
    assert default_targets(model) == as_globs  # the documented timm globs and the adapter's roles agree
    report = vitkit.apply_(model, LoRAConfig(rank=2, skip=["blocks.1.*", "head"]), dry_run=True)
    assert report.steps[0].decisions["modules"] == [n for n in as_globs if not n.startswith("blocks.1.")]
