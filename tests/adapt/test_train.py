"""Fine-tuning adapted models on vitkit's training loop: only trainable parameters move, SlimFit freezing,
counted training memory, and the recipe path lora → finetune → lora_merge."""

import pytest
import torch
from torch.utils.data import TensorDataset

import vitkit
from vitkit import ConfigError
from vitkit.adapt import FineTuneConfig, LoRAConfig, SlimFitConfig, finetune, lora_modules
from vitkit.training import TrainConfig

from ..conftest import make_tiny

CFG = TrainConfig(epochs=1, batch_size=16, lr=5e-3, warmup_epochs=0.0, shift=0.0, seed=0)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(48, 3, 32, 32, generator=g), torch.randint(0, 10, (48,), generator=g))


def test_only_adapter_and_head_move(data):
    model = make_tiny()
    vitkit.apply_(model, LoRAConfig(rank=2))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = finetune(model, data, CFG)
    assert res.trainable["trainable"] < res.trainable["total"] / 5
    for n, p in model.named_parameters():
        moved = not torch.equal(p, before[n])
        assert moved == (".lora_" in n or n.startswith("head")), n


def test_memory_meter_and_slimfit_reduce_training_memory(data):
    full = make_tiny()
    mem_full = finetune(full, data, CFG, measure_memory=True).memory_mb
    lora = make_tiny()
    vitkit.apply_(lora, LoRAConfig(rank=2))
    mem_lora = finetune(lora, data, CFG, measure_memory=True).memory_mb
    assert mem_lora["grads"] < 0.2 * mem_full["grads"] and mem_lora["optimizer"] < 0.2 * mem_full["optimizer"]
    assert mem_full["activations"] > 0 and mem_full["weights"] == pytest.approx(mem_lora["weights"], rel=0.2)
    slim = make_tiny()
    cfg = TrainConfig(epochs=2, batch_size=8, lr=5e-3, warmup_epochs=0.0, shift=0.0, seed=0)
    res_slim = finetune(slim, data, cfg, slimfit=SlimFitConfig(ratio=0.5, interval=2, warmup=2), measure_memory=True)
    n_linear = 12  # 4 linears x 3 blocks
    assert res_slim.slimfit_frozen and set(res_slim.slimfit_frozen) == {n_linear // 2}
    assert all(p.requires_grad for p in slim.parameters())  # released at the end
    res_plain = finetune(make_tiny(), data, cfg, measure_memory=True)
    # half of the block linears are frozen at every step: fewer weight gradients, fewer saved activations
    linear_bytes = sum(p.numel() * 4 for n, p in slim.named_parameters() if n.startswith("blocks") and p.ndim == 2)
    saved_grads = (res_plain.memory_mb["grads"] - res_slim.memory_mb["grads"]) * 2**20
    assert 0.3 * linear_bytes < saved_grads < 0.7 * linear_bytes
    assert res_slim.memory_mb["activations"] < res_plain.memory_mb["activations"]
    assert res_slim.memory_mb["total"] < res_plain.memory_mb["total"]


def test_slimfit_freezes_layers_that_move_least():
    from vitkit.adapt import SlimFitFreezer

    model = make_tiny()
    freezer = SlimFitFreezer(model, SlimFitConfig(ratio=0.25, interval=1, warmup=0))
    assert freezer.frozen == {"blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1"}  # earliest first
    still = {"blocks.1.mlp.fc2", "blocks.2.attn.qkv", "blocks.2.mlp.fc1"}
    with torch.no_grad():  # move every linear except three
        for n, m in freezer.layers.items():
            if n not in still:
                m.weight.mul_(1.1)
    freezer.step(0)
    assert freezer.frozen == still  # the initially frozen ones (not measured yet) come back
    assert not model.blocks[2].mlp.fc1.weight.requires_grad and model.blocks[0].attn.qkv.weight.requires_grad
    with pytest.raises(ConfigError, match="ratio must be in"):
        SlimFitConfig(ratio=1.0)


def test_recipe_path_lora_finetune_merge(tmp_path):
    model = make_tiny()
    keys = list(model.state_dict())
    report = vitkit.apply_(
        model,
        [
            LoRAConfig(rank=2),
            FineTuneConfig(data="digits", num_classes=10, limit=64, train=dict(epochs=1, batch_size=32)),
            vitkit.adapt.LoRAMergeConfig(),
        ],
    )
    assert [s.name for s in report.steps] == ["lora", "finetune", "lora_merge"]
    assert report.steps[1].decisions["images"] == 64 and not lora_modules(model)
    assert list(model.state_dict()) == keys
    x = torch.randn(2, 3, 32, 32)
    vitkit.save_artifact(model, None, None, tmp_path / "a")
    torch.testing.assert_close(vitkit.load(tmp_path / "a")(x), model(x), rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        frozen = make_tiny()
        for p in frozen.parameters():
            p.requires_grad_(False)
        finetune(frozen, TensorDataset(x, torch.tensor([0, 1])), CFG)


def test_lr_scales_scale_the_matching_parameters_step(data):
    """LoRA+ style groups: with B = 0, AdamW's first step moves B by ≈ lr·sign(g), so a ×4 scale on
    ``*.lora_B`` moves B exactly 4× as far, while A (zero gradient while B = 0) only decays, identically."""

    def one_step(scales):
        model = make_tiny()
        vitkit.apply_(model, LoRAConfig(rank=2))
        cfg = TrainConfig(epochs=1, batch_size=16, lr=1e-3, warmup_epochs=0.0, shift=0.0, seed=0, lr_scales=scales)
        finetune(model, data, cfg, limit=16)
        return {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_" in n}

    plain, scaled = one_step(()), one_step((("*.lora_B", 4.0),))
    for n in plain:
        if n.endswith("lora_B"):
            assert plain[n].abs().sum() > 0
            torch.testing.assert_close(scaled[n], 4 * plain[n], rtol=1e-3, atol=1e-9)
        else:
            torch.testing.assert_close(scaled[n], plain[n])
    model = make_tiny()
    vitkit.apply_(model, LoRAConfig(rank=2))
    for scales, what in (((("*.lora_C", 4.0),), "matches no trainable"), ((("*.lora_B", 0.0),), "positive")):
        cfg = TrainConfig(epochs=1, batch_size=16, lr_scales=scales)
        with pytest.raises(ConfigError, match=what):
            finetune(model, data, cfg, limit=16)
    assert FineTuneConfig(lora_plus=16).train_config().lr_scales == (("*.lora_B", 16.0),)
    assert FineTuneConfig().train_config().lr_scales == ()
    with pytest.raises(ConfigError, match="LoRA\\+ ratio must be a positive number"):
        FineTuneConfig(lora_plus=0)
