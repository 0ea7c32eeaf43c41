"""Every registered transform × the six plain-ViT variants: the properties each method owes, read from the
registry (``TransformSpec.example`` / ``.zero``), so a newly registered method is tested without new test code.

- config → YAML → config is equal;
- ``dry_run=True`` changes nothing (weights, outputs, classes, history);
- the zero-strength setting leaves the outputs unchanged;
- apply → save artifact → load reproduces the outputs and the step history.

A variant the method does not handle must refuse it with ``UnsupportedModelError`` (a skip here, by name).
"""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

import vitkit
from vitkit.artifact import load_artifact, save_artifact
from vitkit.errors import UnsupportedModelError

from .conftest import VARIANTS, make_tiny

SPECS = {s.name: s for s in vitkit.list_transforms()}
NAMES = sorted(SPECS)


def _kwargs(setting, model, workdir) -> dict:
    """A spec's setting; a callable one gets a workdir holding the untouched ``model`` as artifact ``model/``."""
    if not callable(setting):
        return dict(setting)
    if not (workdir / "model").exists():
        save_artifact(model, None, None, workdir / "model")
    return dict(setting(workdir))


def _outputs(model, x):
    with torch.no_grad():
        out = model.eval()(x)
    return out[0] if isinstance(out, tuple) else out


def _prerequisites(spec, model, images, workdir) -> list[str]:
    """Apply the examples of the transforms ``spec`` needs before it (``lora`` before ``lora_merge``)."""
    for pre in spec.after:
        pre_spec = SPECS[pre]
        _apply(model, pre_spec.config_cls(**_kwargs(pre_spec.example, model, workdir)), images)
    return list(spec.after)


def _apply(model, cfg, images):
    try:
        return vitkit.apply_(model, cfg, calib=images)
    except UnsupportedModelError as exc:
        pytest.skip(f"refused by name: {exc}")


@pytest.mark.parametrize("name", NAMES)
def test_every_transform_declares_an_example(name):
    spec = SPECS[name]
    assert spec.example is not None, f"register {name!r} with example={{...}} (a cheap setting that changes a model)"
    assert spec.paper, f"register {name!r} with paper=..."


@pytest.mark.parametrize("name", NAMES)
def test_config_yaml_round_trip(name, tmp_path):
    spec = SPECS[name]
    for setting in (spec.example, spec.zero):
        if setting is None:
            continue
        cfg = spec.config_cls(**_kwargs(setting, make_tiny("vit"), tmp_path))
        text = yaml.safe_dump({name: cfg.to_dict()})
        back = spec.config_cls.from_dict(yaml.safe_load(text)[name], version=spec.config_cls.version)
        assert back == cfg and hash(back) == hash(cfg)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", NAMES)
def test_dry_run_changes_nothing(name, variant, images, tmp_path):
    spec = SPECS[name]
    model = make_tiny(variant)
    history = _prerequisites(spec, model, images, tmp_path)
    cfg = spec.config_cls(**_kwargs(spec.example, model, tmp_path))
    before_sd = {k: v.clone() for k, v in model.state_dict().items()}
    before_out = _outputs(model, images)
    classes = [type(m) for m in model.modules()]
    try:
        report = vitkit.apply_(model, cfg, calib=images, dry_run=True)
    except UnsupportedModelError as exc:
        pytest.skip(f"refused by name: {exc}")
    assert report.dry_run and [s.name for s in report.steps] == [name]
    assert [type(m) for m in model.modules()] == classes
    assert model.state_dict().keys() == before_sd.keys()
    assert all(torch.equal(v, before_sd[k]) for k, v in model.state_dict().items())
    assert torch.equal(_outputs(model, images), before_out)
    assert [s.name for s in getattr(model, "vitkit_steps", [])] == history


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", NAMES)
def test_zero_strength_is_identity(name, variant, images, tmp_path):
    spec = SPECS[name]
    if spec.zero is None:
        pytest.skip(f"{name} has no zero-strength setting")
    model = make_tiny(variant)
    _prerequisites(spec, model, images, tmp_path)
    reference = _outputs(copy.deepcopy(model), images)
    _apply(model, spec.config_cls(**_kwargs(spec.zero, model, tmp_path)), images)
    torch.testing.assert_close(_outputs(model, images), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", NAMES)
def test_save_load_reproduces_outputs(name, variant, images, tmp_path):
    spec = SPECS[name]
    model = make_tiny(variant)
    history = _prerequisites(spec, model, images, tmp_path)
    _apply(model, spec.config_cls(**_kwargs(spec.example, model, tmp_path)), images)
    expected = _outputs(model, images)
    save_artifact(model, None, None, tmp_path / "artifact")
    loaded = load_artifact(tmp_path / "artifact")
    assert [s.name for s in loaded.vitkit_steps] == [*history, name]
    torch.testing.assert_close(_outputs(loaded, images), expected, rtol=1e-5, atol=1e-5)
