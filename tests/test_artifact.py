from dataclasses import dataclass

import pytest
import torch
import yaml

import vitkit
from vitkit import ConfigError, TransformConfig, register_transform
from vitkit._io import atomic_write_text
from vitkit.artifact import RECIPE, REPORT_JSON, REPORT_MD, WEIGHTS, save_artifact
from vitkit.registry import unregister_transform

from .conftest import make_tiny


@dataclass(frozen=True)
class OutputScaleConfig(TransformConfig):
    factor: float = 2.0


def _patch(model, cfg, *, calib=None, dry_run=False):
    if dry_run:
        return {}
    base_cls = type(model)

    class Scaled(base_cls):
        def forward(self, x):
            return super().forward(x) * self._factor

    model.__class__ = Scaled
    model._factor = cfg.factor
    return {"summary": f"x{cfg.factor}"}


@pytest.fixture
def runtime_transform():
    register_transform(OutputScaleConfig, name="test_output_scale", kind="runtime")(_patch)
    yield
    unregister_transform("test_output_scale")


@pytest.mark.parametrize("variant", ["vit", "distilled", "registers", "avgpool"])
def test_round_trip_reproduces_outputs(tmp_path, images, variant):
    model = make_tiny(variant)
    out = save_artifact(model, {"note": "test"}, {"variants": [{"name": "m", "top1": 0.5}]}, tmp_path / "art")
    for name in (WEIGHTS, RECIPE, REPORT_JSON, REPORT_MD):
        assert (out / name).is_file()
    loaded = vitkit.load(out)
    torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)
    resolved = yaml.safe_load((out / RECIPE).read_text())
    assert resolved["model"]["name"] == model.vitkit_arch["name"] and resolved["recipe"] == {"note": "test"}


def test_runtime_steps_are_replayed(tmp_path, images, runtime_transform):
    model = make_tiny()
    vitkit.apply_(model, OutputScaleConfig(factor=3.0))
    save_artifact(model, None, None, tmp_path / "art")
    loaded = vitkit.load(tmp_path / "art")
    torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)
    assert [s.name for s in loaded.vitkit_steps] == ["test_output_scale"]


def test_overwrite_replaces_artifact_but_refuses_other_dirs(tmp_path, images):
    a, b = make_tiny(seed=1), make_tiny(seed=2)
    save_artifact(a, None, None, tmp_path / "art")
    save_artifact(b, None, None, tmp_path / "art")
    torch.testing.assert_close(vitkit.load(tmp_path / "art")(images), b(images), rtol=0, atol=0)
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "thesis.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="is not a vitkit artifact"):
        save_artifact(a, None, None, precious)
    assert (precious / "thesis.txt").read_text() == "keep me"


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    import vitkit.artifact as art

    model = make_tiny()
    save_artifact(model, None, None, tmp_path / "art")
    before = (tmp_path / "art" / WEIGHTS).read_bytes()

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(art, "resolved_recipe", broken)
    with pytest.raises(OSError, match="disk full"):
        save_artifact(make_tiny(seed=5), None, None, tmp_path / "art")
    assert (tmp_path / "art" / WEIGHTS).read_bytes() == before  # old artifact intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no staging dirs left
    with pytest.raises(OSError):
        save_artifact(model, None, None, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_atomic_write_text(tmp_path):
    p = atomic_write_text(tmp_path / "a" / "f.txt", "hello")
    assert p.read_text() == "hello" and [x.name for x in p.parent.iterdir()] == ["f.txt"]


def test_not_an_artifact(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(vitkit.CheckpointError, match="is not a vitkit artifact"):
        vitkit.load(tmp_path / "d")
