"""Early exit (LGViT) on tiny random-init timm ViTs: exactness, per-sample exiting, artifacts, bad input."""

from __future__ import annotations

import copy

import pytest
import torch

import vitkit
from vitkit.early_exit import (
    EarlyExitConfig,
    exit_histogram,
    last_exits,
    remove,
    reset_histogram,
    set_threshold,
)
from vitkit.early_exit.runtime import EarlyExitVisionTransformer, all_exit_logits
from vitkit.errors import ConfigError, UnsupportedModelError
from vitkit.ops.early_exit import exit_scores

from ..conftest import VARIANTS, make_tiny

HEADS = ("linear", "attention-pool")


def _x(n=6, seed=1):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _exit_model(variant="vit", head="linear", threshold=0.5, exits=(0, 1), depth=3, **kw):
    model = make_tiny(variant, depth=depth)
    vitkit.apply_(model, EarlyExitConfig(exits=list(exits), head=head, threshold=threshold, **kw, train=dict(epochs=0)))
    return model


def _spread_threshold(model, x) -> float:
    """A threshold between the observed first-exit scores, so samples leave at different exits."""
    with torch.no_grad():
        s = exit_scores(all_exit_logits(model, x)[0])
    return float(s.sort().values[len(s) // 2 - 1 : len(s) // 2 + 1].mean())


# -- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("exits", [[-1], [2, 1], [1, 1], [], [True]])
def test_bad_exit_lists_are_refused(exits):
    with pytest.raises(ConfigError, match="exits"):
        EarlyExitConfig(exits=exits)


@pytest.mark.parametrize("exits", [[2], [0, 5]])
def test_exits_beyond_the_model_are_refused_and_model_untouched(exits):
    model = make_tiny("vit", depth=3)
    ref = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match=r"out of range.*3 blocks.*blocks\.1"):
        vitkit.apply_(model, EarlyExitConfig(exits=exits, train=dict(epochs=0)))
    assert not isinstance(model, EarlyExitVisionTransformer)
    assert model.state_dict().keys() == ref.keys()


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.2, 1.5, (0.5, 1.0)])
def test_thresholds_outside_open_unit_interval_are_refused(threshold):
    with pytest.raises(ConfigError, match=r"threshold.*\(0, 1\)"):
        EarlyExitConfig(exits=[0, 1], threshold=threshold)


def test_other_bad_config():
    with pytest.raises(ConfigError, match="head"):
        EarlyExitConfig(head="conv")
    with pytest.raises(ConfigError, match="criterion"):
        EarlyExitConfig(criterion="patience")
    with pytest.raises(ConfigError, match="3 entries for 2 exits"):
        EarlyExitConfig(exits=[0, 1], threshold=[0.5, 0.6, 0.7])
    model = _exit_model()
    with pytest.raises(ConfigError, match="already has early exits"):
        vitkit.apply_(model, EarlyExitConfig(exits=[0], train=dict(epochs=0)))
    with pytest.raises(ConfigError, match=r"\(0, 1\)"):
        set_threshold(model, 1.0)


def test_unpooled_model_is_refused():
    model = make_tiny("vit", global_pool="")
    with pytest.raises(UnsupportedModelError, match="global_pool"):
        vitkit.apply_(model, EarlyExitConfig(exits=[0], train=dict(epochs=0)))


# -- exactness ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_threshold_near_one_never_exits_and_equals_the_model(variant, head):
    model = make_tiny(variant)
    x = _x()
    with torch.no_grad():
        ref = model(x)
    vitkit.apply_(model, EarlyExitConfig(exits=[0, 1], head=head, threshold=1 - 1e-6, train=dict(epochs=0)))
    with torch.no_grad():
        out = model(x)
    assert torch.equal(out, ref)
    assert exit_histogram(model) == {"blocks.0": 0, "blocks.1": 0, "final": 6}
    out_grad = model(x)  # eval without no_grad works too
    assert torch.equal(out_grad.detach(), ref)


@pytest.mark.parametrize("criterion", ["confidence", "entropy"])
@pytest.mark.parametrize("head", HEADS)
def test_tiny_threshold_exits_everything_at_the_first_exit(head, criterion):
    model = _exit_model("registers", head=head, threshold=1e-6, criterion=criterion)
    x = _x()
    with torch.no_grad():
        first = all_exit_logits(model, x)[0]
        out = model(x)
    assert torch.equal(out, first)
    assert last_exits(model).tolist() == [0] * 6
    assert exit_histogram(model)["blocks.0"] == 6


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("variant", ["vit", "avgpool", "distilled"])
def test_per_sample_exit_equals_running_each_sample_alone(variant, head):
    model = _exit_model(variant, head=head, exits=(0, 1))
    x = _x(8)
    set_threshold(model, _spread_threshold(model, x))
    with torch.no_grad():
        batched = model(x)
        exits = last_exits(model).clone()
        alone = torch.cat([model(x[i : i + 1]) for i in range(8)])
        alone_last = last_exits(model).item()  # exit of the last sample, run alone
    assert len(set(exits.tolist())) >= 2, "test needs samples leaving at different exits"
    assert alone_last == exits[-1].item()
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # each sample's logits are those of the head it left at
        every = all_exit_logits(model, x)
    picked = torch.stack([every[k][i] for i, k in enumerate(exits.tolist())])
    torch.testing.assert_close(batched, picked, rtol=1e-5, atol=1e-5)


def test_histogram_sums_to_n_and_resets():
    model = _exit_model()
    x = _x(7)
    set_threshold(model, _spread_threshold(model, x))
    with torch.no_grad():
        model(x)
        model(x[:3])
    hist = exit_histogram(model)
    assert sum(hist.values()) == 10
    assert list(hist) == ["blocks.0", "blocks.1", "final"]
    reset_histogram(model)
    assert sum(exit_histogram(model).values()) == 0


def test_training_mode_and_remove_give_the_host_forward():
    model = make_tiny("vit")
    x = _x()
    with torch.no_grad():
        ref = model(x)
    vitkit.apply_(model, EarlyExitConfig(exits=[0], threshold=1e-6, train=dict(epochs=0)))
    model.train()
    with torch.no_grad():
        assert torch.equal(model(x), ref)  # training forward: no exiting
    model.eval()
    remove(model)
    assert type(model).__name__ == "VisionTransformer"
    assert not any(k.startswith("exit_heads") for k in model.state_dict())
    with torch.no_grad():
        assert torch.equal(model(x), ref)


def test_dry_run_touches_nothing():
    model = make_tiny("vit")
    keys = set(model.state_dict())
    rep = vitkit.apply_(model, EarlyExitConfig(exits=[0, 1], train=dict(epochs=0)), dry_run=True)
    assert rep.steps[0].decisions["exits"] == [0, 1]
    assert set(model.state_dict()) == keys and not isinstance(model, EarlyExitVisionTransformer)


def test_default_exits_cover_the_upper_two_thirds():
    model = make_tiny("vit", depth=6)
    rep = vitkit.apply_(model, EarlyExitConfig(train=dict(epochs=0)))
    assert rep.steps[0].decisions["exits"] == [2, 3, 4]


# -- artifacts ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("head", [HEADS, "linear"])
def test_save_load_round_trip(tmp_path, head):
    head = list(head) if isinstance(head, tuple) else head
    model = _exit_model("vit", head=head)
    with torch.no_grad():  # make the heads' weights differ from any fresh init
        for p in model.exit_heads.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = _x(8)
    set_threshold(model, _spread_threshold(model, x))
    with torch.no_grad():
        ref = model(x)
        ref_exits = last_exits(model).clone()
    vitkit.save_artifact(model, None, None, tmp_path / "art")
    loaded = vitkit.load(tmp_path / "art")
    assert isinstance(loaded, EarlyExitVisionTransformer)
    with torch.no_grad():
        out = loaded(x)
    assert torch.equal(out, ref)
    assert torch.equal(last_exits(loaded), ref_exits)


# -- training -----------------------------------------------------------------------------------------
def test_training_changes_only_the_heads():
    model = make_tiny("vit")
    backbone = {k: v.clone() for k, v in model.state_dict().items()}
    x = _x(4)
    with torch.no_grad():
        ref = model(x)
    cfg = EarlyExitConfig(
        exits=[0, 1], threshold=1 - 1e-6, limit=64, data="digits", train=dict(epochs=1, batch_size=32)
    )
    rep = vitkit.apply_(model, cfg)
    assert rep.steps[0].decisions["training"]["epochs"] == 1
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in backbone.items())
    fresh = make_tiny("vit")
    vitkit.apply_(fresh, cfg.replace(train={"epochs": 0}))
    moved = [k for k, v in fresh.state_dict().items() if k.startswith("exit_heads") and not torch.equal(after[k], v)]
    assert moved, "training did not change the exit heads"
    with torch.no_grad():
        assert torch.equal(model(x), ref)


# -- token reduction -------------------------------------------------------------------------------------
def test_token_reduction_before_early_exit_is_honoured(tmp_path):
    model = make_tiny("avgpool")
    vitkit.apply_(model, vitkit.ToMeConfig(r=3))
    x = _x(8)
    with torch.no_grad():
        ref = model(x)
    vitkit.apply_(model, EarlyExitConfig(exits=[0, 1], head="attention-pool", threshold=1 - 1e-6, train=dict(epochs=0)))
    with torch.no_grad():
        assert torch.equal(model(x), ref)
    set_threshold(model, _spread_threshold(model, x))
    with torch.no_grad():
        batched = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(8)])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    vitkit.save_artifact(model, None, None, tmp_path / "art")  # both runtime steps replayed, in order
    loaded = vitkit.load(tmp_path / "art")
    with torch.no_grad():
        assert torch.equal(loaded(x), batched)


def test_removing_token_reduction_keeps_the_exits():
    model = make_tiny("avgpool")
    plain = copy.deepcopy(model)
    vitkit.apply_(model, vitkit.ToMeConfig(r=3))
    vitkit.apply_(model, EarlyExitConfig(exits=[0, 1], head="linear", threshold=1 - 1e-6, train=dict(epochs=0)))
    vitkit.tokens.remove(model)
    x = _x(8)
    assert isinstance(model, EarlyExitVisionTransformer)
    assert [s.name for s in model.vitkit_steps] == ["early_exit"]
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))  # τ≈1: the host model, now without token merging
    set_threshold(model, _spread_threshold(model, x))
    with torch.no_grad():
        batched = model(x)
        assert len(set(last_exits(model).tolist())) >= 2
        alone = torch.cat([model(x[i : i + 1]) for i in range(8)])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)


def test_token_reduction_after_early_exit_is_refused():
    model = _exit_model()
    with pytest.raises(ConfigError, match="token reduction cannot be applied after early exit"):
        vitkit.apply_(model, vitkit.ToMeConfig(r=2))
    assert isinstance(model, EarlyExitVisionTransformer)
    assert type(model.blocks[0]).__name__ == "Block"


# -- CLI ---------------------------------------------------------------------------------------------------
def test_cli_bad_exits_is_one_line_error(tmp_path, capsys):
    from vitkit.cli import main

    src = vitkit.save_artifact(make_tiny("vit"), None, None, tmp_path / "m")
    rc = main(["early-exit", str(src), "-o", str(tmp_path / "out"), "--exits", "7", "--epochs", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and "out of range" in err[0]
    assert not (tmp_path / "out").exists()


def test_cli_writes_a_loadable_artifact(tmp_path, capsys):
    from vitkit.cli import main

    src = vitkit.save_artifact(make_tiny("vit"), None, None, tmp_path / "m")
    out = tmp_path / "out"
    rc = main(["early-exit", str(src), "-o", str(out), "--exits", "0,1", "--epochs", "0", "--data", "digits"])
    assert rc == 0 and "exit histogram" in capsys.readouterr().out
    loaded = vitkit.load(out)
    assert isinstance(loaded, EarlyExitVisionTransformer)
    assert sum(exit_histogram(loaded).values()) == 0


@pytest.mark.parametrize("head", HEADS)
def test_onnx_export_makes_the_same_exit_decisions(head, tmp_path):
    pytest.importorskip("onnxruntime")
    from vitkit.deploy import export_model
    from vitkit.early_exit.runtime import ExitSelectGraph

    model = _exit_model("vit", head=head, exits=(0, 1))
    x = _x(8)
    set_threshold(model, _spread_threshold(model, x))
    with torch.no_grad():
        ref = model(x)
        assert len(set(last_exits(model).tolist())) >= 2, "test needs samples leaving at different exits"
        torch.testing.assert_close(ExitSelectGraph(model)(x), ref, rtol=1e-5, atol=1e-5)
    from vitkit.data import TensorImageDataset, input_spec

    data = TensorImageDataset(x, torch.zeros(8, dtype=torch.long), input_spec(model))
    res = export_model(model, tmp_path / "onnx", data=data, images=8, bench=False)
    assert res.agreement == 1.0 and res.max_abs_diff <= 1e-4


# -- cost-aware per-exit calibration -------------------------------------------------------------------
def test_switched_off_exit_is_never_taken_and_survives_save_load(tmp_path):
    from vitkit.early_exit.runtime import ExitSelectGraph

    model = _exit_model("vit", exits=(0, 1))
    x = _x(8)
    t = _spread_threshold(model, x)
    set_threshold(model, [t, t], active=[False, True])
    with torch.no_grad():
        out = model(x)
        exits = last_exits(model).clone()
        alone = torch.cat([model(x[i : i + 1]) for i in range(8)])
        torch.testing.assert_close(ExitSelectGraph(model)(x), out, rtol=1e-5, atol=1e-5)
    assert 0 not in exits.tolist()
    torch.testing.assert_close(alone, out, rtol=1e-5, atol=1e-5)
    vitkit.save_artifact(model, None, None, tmp_path / "art")
    loaded = vitkit.load(tmp_path / "art")
    with torch.no_grad():
        assert torch.equal(loaded(x), out)
    assert torch.equal(last_exits(loaded), exits)
    with pytest.raises(ConfigError, match="one entry per exit"):
        set_threshold(model, t, active=[True])


@pytest.mark.parametrize("cost", ["macs", "latency"])
def test_per_exit_calibration_on_a_model_fits_the_budget(cost):
    from vitkit.data import TensorImageDataset, input_spec
    from vitkit.early_exit import calibrate, evaluate_exits

    model = _exit_model("vit", exits=(0, 1))
    x = _x(32, seed=4)
    with torch.no_grad():
        y = model(x).argmax(-1)  # labels = the model's own predictions: the final head is 100 % right
    data = TensorImageDataset(x, y, input_spec(model))
    single = calibrate(model, data, 10.0)
    info = calibrate(model, data, 10.0, per_exit=True, cost=cost)
    ev = evaluate_exits(model, data)
    assert info["mode"] == "per-exit" and info["drop_pts"] <= 10.0 + 1e-6
    assert abs(ev["drop_pts"] - info["drop_pts"]) < 1e-4  # the recorded thresholds reproduce the calibration
    if cost == "macs":
        assert info["macs_ratio"] >= single["macs_ratio"] - 1e-9
    else:
        assert len(info["measured_ms"]["blocks"]) == 3 and info["latency_ratio_estimate"] > 0
    with pytest.raises(ConfigError, match="'macs' or 'latency'"):
        calibrate(model, data, 1.0, per_exit=True, cost="flops")
    with pytest.raises(ConfigError, match="calibration must be"):
        EarlyExitConfig(calibration="greedy")
