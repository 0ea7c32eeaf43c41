"""LoRA-FAIR vs plain factor averaging, and peft-format LoRA files."""

import json

import pytest
import torch

import vitkit
from vitkit import CheckpointError, ConfigError
from vitkit.adapt import (
    LoRAConfig,
    aggregate_lora,
    load_lora_state_dict,
    lora_modules,
    lora_state_dict,
)
from vitkit.api import merge_back
from vitkit.interop import export_peft, import_peft
from vitkit.ops.lora import aggregate_lora_factors, fold_lora, mean_delta, mean_factors, relative_error

from ..conftest import make_tiny


def _clients(k=3, r=4, out=24, inp=16, seed=0, shared_rows=False):
    """K clients' LoRA factors; ``shared_rows``: every A_k = M_k · A0 spans the same row space."""
    g = torch.Generator().manual_seed(seed)
    a0 = torch.randn(r, inp, generator=g)
    a_list = [
        torch.randn(r, r, generator=g) @ a0 if shared_rows else torch.randn(r, inp, generator=g) for _ in range(k)
    ]
    return a_list, [torch.randn(out, r, generator=g) for _ in range(k)]


@pytest.mark.parametrize("shared_rows", [False, True])
def test_mean_of_factors_is_not_mean_of_products_and_fair_reduces_the_error(shared_rows):
    a_list, b_list = _clients(shared_rows=shared_rows)
    ideal = mean_delta(a_list, b_list)  # mean(B_k A_k)
    a_bar, b_bar = mean_factors(a_list, b_list)
    naive = relative_error(b_bar @ a_bar, ideal)
    assert naive > 0.3  # mean(B)·mean(A) != mean(B·A): the cross terms B_j A_k (j != k) do not vanish
    a_f, b_f = aggregate_lora_factors(a_list, b_list, method="fair")
    torch.testing.assert_close(a_f, a_bar)  # FAIR keeps Ā and corrects B̄
    fair = relative_error(b_f @ a_f, ideal)
    assert fair < 0.95 * naive
    # the corrected B is the least-squares best for Ā: no B can do better (up to the tiny ridge term) ...
    best = ideal @ torch.linalg.pinv(a_bar)
    assert fair <= relative_error(best @ a_bar, ideal) + 1e-3
    if shared_rows:  # ... so it is exact when ΔW lies in Ā's row space
        assert fair < 1e-2


def test_identical_clients_aggregate_exactly_and_weights_count():
    a_list, b_list = _clients(k=1)
    a, b = aggregate_lora_factors(a_list * 3, b_list * 3, method="mean")
    torch.testing.assert_close(b @ a, b_list[0] @ a_list[0])
    a_list, b_list = _clients(k=2, seed=1)
    a, b = aggregate_lora_factors(a_list, b_list, [1.0, 0.0], method="fair")
    torch.testing.assert_close(b @ a, b_list[0] @ a_list[0], rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="same rank"):
        aggregate_lora_factors([torch.randn(2, 4), torch.randn(3, 4)], [torch.randn(5, 2), torch.randn(5, 3)])


def _lora_model(seed):
    m = make_tiny("vit")
    vitkit.apply_(m, LoRAConfig(rank=2, seed=seed))
    g = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for mod in lora_modules(m).values():
            mod.lora_B.copy_(torch.randn(mod.lora_B.shape, generator=g) * 0.1)
    return m


def test_aggregate_lora_on_models():
    updates = [lora_state_dict(_lora_model(s)) for s in range(3)]
    mean, err_mean = aggregate_lora(updates, method="mean")
    fair, err_fair = aggregate_lora(updates, method="fair")
    assert set(mean) == set(updates[0]) and set(err_mean) == set(err_fair)
    assert all(err_fair[n] < err_mean[n] for n in err_mean)
    target = _lora_model(7)
    load_lora_state_dict(target, fair)
    torch.testing.assert_close(lora_state_dict(target)["blocks.0.attn.qkv.lora_B"], fair["blocks.0.attn.qkv.lora_B"])
    with pytest.raises(ConfigError, match="method must be"):
        aggregate_lora(updates, method="median")
    with pytest.raises(ConfigError, match="other modules"):
        aggregate_lora([updates[0], {k: v for k, v in updates[1].items() if "blocks.0" not in k}])


def test_peft_export_format_and_round_trip(tmp_path, images):
    src = _lora_model(0)
    ref = src(images).detach()
    out = export_peft(src, tmp_path / "peft")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 2 and cfg["lora_alpha"] == 16.0
    assert cfg["target_modules"][:4] == [
        "blocks.0.attn.qkv",
        "blocks.0.attn.proj",
        "blocks.0.mlp.fc1",
        "blocks.0.mlp.fc2",
    ]
    assert not any("patch_embed" in t or t.startswith("head") for t in cfg["target_modules"])
    assert cfg["modules_to_save"] == ["head"]
    from safetensors.torch import load_file

    keys = set(load_file(str(out / "adapter_model.safetensors")))
    assert "base_model.model.blocks.0.attn.qkv.lora_A.weight" in keys
    assert "base_model.model.blocks.2.mlp.fc2.lora_B.weight" in keys and "base_model.model.head.weight" in keys
    dst = make_tiny("vit", seed=0)
    import_peft(dst, out)
    torch.testing.assert_close(dst(images), ref, rtol=1e-6, atol=1e-6)
    assert [s.name for s in dst.vitkit_steps] == ["lora"]
    merge_back(dst)
    torch.testing.assert_close(dst(images), ref, rtol=1e-5, atol=1e-5)


def test_peft_file_written_by_hand_means_w_plus_alpha_over_r_ba(tmp_path, images):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 48, generator=g), torch.randn(144, 4, generator=g)
    d = tmp_path / "hand"
    d.mkdir()
    save_file(
        {"base_model.model.blocks.1.attn.qkv.lora_A.weight": a, "base_model.model.blocks.1.attn.qkv.lora_B.weight": b},
        str(d / "adapter_model.safetensors"),
    )
    (d / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 2, "target_modules": ["qkv"]})
    )
    model, expected = make_tiny(), make_tiny()
    with torch.no_grad():
        expected.blocks[1].attn.qkv.weight.copy_(fold_lora(expected.blocks[1].attn.qkv.weight, a, b, 2 / 4))
    import_peft(model, d)
    torch.testing.assert_close(model(images), expected(images), rtol=1e-5, atol=1e-5)
    cfg = json.loads((d / "adapter_config.json").read_text())
    (d / "adapter_config.json").write_text(json.dumps(dict(cfg, use_dora=True)))
    with pytest.raises(CheckpointError, match="DoRA is not supported"):
        import_peft(make_tiny(), d)
    (d / "adapter_config.json").write_text(json.dumps(dict(cfg, target_modules=["fc1"])))
    with pytest.raises(CheckpointError, match="not covered by target_modules"):
        import_peft(make_tiny(), d)
    with pytest.raises(CheckpointError, match="not a peft LoRA directory"):
        import_peft(make_tiny(), tmp_path / "missing")
    with pytest.raises(ConfigError, match="no LoRA layers to export"):
        export_peft(make_tiny(), tmp_path / "none")
