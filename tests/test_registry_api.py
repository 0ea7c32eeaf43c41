"""The framework, exercised through transforms defined here (no method family needed)."""

from dataclasses import dataclass

import pytest
import torch

import vitkit
from vitkit import ConfigError, OrderError, TransformConfig, register_transform, select_names
from vitkit.adapters import describe
from vitkit.registry import unregister_transform


@dataclass(frozen=True)
class ScaleHeadConfig(TransformConfig):
    factor: float = 2.0

    def validate(self):
        if self.factor == 0:
            raise ConfigError("factor must be non-zero")


@dataclass(frozen=True)
class ShrinkMlpConfig(TransformConfig):
    fail: bool = False


@dataclass(frozen=True)
class ScaleBlocksConfig(TransformConfig):
    factor: float = 1.0


def _scale_head(model, cfg, *, calib=None, dry_run=False):
    decisions = {"summary": f"head x{cfg.factor}", "calib_seen": calib is not None}
    if not dry_run:
        with torch.no_grad():
            model.head.weight.mul_(cfg.factor)
    return decisions


def _zero_blocks(model, cfg, *, calib=None, dry_run=False):
    info = describe(model)
    chosen = select_names(info.block_names, cfg.targets, cfg.skip, what="blocks")
    if not dry_run:
        for name in chosen:
            blk = model.get_submodule(name)
            with torch.no_grad():
                blk.mlp.fc2.weight.zero_()
            if cfg.fail:
                raise RuntimeError("boom")
    return {"blocks": chosen}


def _runtime_scale(model, cfg, *, calib=None, dry_run=False):
    if not dry_run:
        model.vitkit_runtime_factor = cfg.factor
    return {}


@pytest.fixture(autouse=True)
def registered():
    register_transform(ScaleHeadConfig, name="test_scale_head", kind="weights", paper="test")(_scale_head)
    register_transform(ShrinkMlpConfig, name="test_zero_mlp", kind="structure", restore=lambda m, c, d: None)(
        _zero_blocks
    )
    register_transform(ScaleBlocksConfig, name="test_runtime", kind="runtime")(_runtime_scale)
    yield
    for n in ("test_scale_head", "test_zero_mlp", "test_runtime"):
        unregister_transform(n)


def test_list_transforms_glob():
    names = [s.name for s in vitkit.list_transforms("test_*")]
    assert names == ["test_runtime", "test_scale_head", "test_zero_mlp"]
    assert [s.name for s in vitkit.list_transforms("test_*", kind="weights")] == ["test_scale_head"]


def test_apply_changes_model_and_records_history(tiny_model, images):
    before = tiny_model(images)
    report = vitkit.apply_(tiny_model, ScaleHeadConfig(factor=3.0), calib=images)
    assert report.steps[0].name == "test_scale_head" and report.steps[0].decisions["calib_seen"]
    assert not torch.allclose(before, tiny_model(images))
    assert [s.name for s in tiny_model.vitkit_steps] == ["test_scale_head"]


def test_dry_run_touches_nothing(tiny_model, images):
    before = tiny_model(images)
    report = vitkit.apply_(tiny_model, [ShrinkMlpConfig(targets=["blocks.1"]), ScaleHeadConfig()], dry_run=True)
    assert report.dry_run and report.steps[0].decisions["blocks"] == ["blocks.1"]
    torch.testing.assert_close(before, tiny_model(images), rtol=0, atol=0)
    assert not getattr(tiny_model, "vitkit_steps", [])


def test_order_is_checked_within_and_across_calls(tiny_model):
    with pytest.raises(OrderError, match="'test_zero_mlp' \\(structure\\) cannot come after 'test_scale_head'"):
        vitkit.apply_(tiny_model, [ScaleHeadConfig(), ShrinkMlpConfig()])
    vitkit.apply_(tiny_model, ScaleBlocksConfig())
    with pytest.raises(OrderError, match="cannot come after 'test_runtime'"):
        vitkit.apply_(tiny_model, ScaleHeadConfig())


def test_failed_step_restores_the_model(tiny_model, images):
    before = tiny_model(images)
    with pytest.raises(RuntimeError, match="boom"):
        vitkit.apply_(tiny_model, ShrinkMlpConfig(fail=True))
    torch.testing.assert_close(before, tiny_model(images), rtol=0, atol=0)


def test_targets_matching_nothing_is_an_error(tiny_model):
    with pytest.raises(ConfigError, match="matches no blocks"):
        vitkit.apply_(tiny_model, ShrinkMlpConfig(targets=["blocks.9"]))


def test_unknown_transform_lists_valid():
    with pytest.raises(ConfigError, match="unknown transform 'test_scale_haed' \\(did you mean test_scale_head"):
        vitkit.get_transform("test_scale_haed")


def test_non_config_rejected(tiny_model):
    with pytest.raises(ConfigError, match="TransformConfig"):
        vitkit.apply_(tiny_model, [{"r": 8}])
