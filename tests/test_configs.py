from dataclasses import FrozenInstanceError, dataclass

import pytest
import yaml

from vitkit import ConfigError, TransformConfig, resolve_schedule, select_names


@dataclass(frozen=True)
class DemoConfig(TransformConfig):
    version = 2
    strength: float = 0.5
    layers: tuple = (1, 2)

    def validate(self) -> None:
        if not 0 <= self.strength <= 1:
            raise ConfigError(f"strength must be in [0, 1], got {self.strength}")


def test_frozen_and_validated():
    cfg = DemoConfig(strength=0.25)
    with pytest.raises(FrozenInstanceError):
        cfg.strength = 0.3  # type: ignore[misc]
    with pytest.raises(ConfigError, match="strength must be in"):
        DemoConfig(strength=2.0)


def test_lists_become_tuples_and_hashable():
    cfg = DemoConfig(layers=[3, 4], targets=["blocks.*"])
    assert cfg.layers == (3, 4) and cfg.targets == ("blocks.*",)
    hash(cfg)


def test_dict_and_yaml_round_trip():
    cfg = DemoConfig(strength=0.75, layers=(0, 5), skip=("blocks.0",))
    data = yaml.safe_load(yaml.safe_dump(cfg.to_dict()))
    assert DemoConfig.from_dict(data) == cfg


def test_unknown_key_lists_valid_keys():
    with pytest.raises(
        ConfigError, match=r"unknown key\(s\) \['strenght'\].*valid keys: \['targets', 'skip', 'strength'"
    ):
        DemoConfig.from_dict({"strenght": 0.1})


def test_newer_version_refused():
    with pytest.raises(ConfigError, match="newer than this vitkit"):
        DemoConfig.from_dict({"strength": 0.1}, version=3)
    assert DemoConfig.from_dict({"strength": 0.1, "version": 1}).strength == 0.1


def test_positional_field_is_the_method_field():
    assert DemoConfig(0.3).strength == 0.3  # targets/skip are keyword-only


@pytest.mark.parametrize(
    "value, expected",
    [
        (4, [4, 4, 4, 4]),
        ([1, 2, 3, 4], [1, 2, 3, 4]),
        ({"start": 8, "end": 2}, [8, 6, 4, 2]),
        ({"start": 1.0, "end": 0.25}, [1.0, 0.75, 0.5, 0.25]),
        ({"at": {1: 0.7, -1: 0.5}, "default": 1.0}, [1.0, 0.7, 1.0, 0.5]),
    ],
)
def test_schedule_forms(value, expected):
    assert resolve_schedule(value, 4) == expected


@pytest.mark.parametrize(
    "value, msg",
    [
        ([1, 2], "has 2 entries but the model has 4 blocks"),
        ({"at": {7: 1}, "default": 0}, "out of range"),
        ({"at": {1: 1}}, "needs a 'default'"),
        ({"from": 1}, "schedule dict must be"),
        ("fast", "expected a number"),
    ],
)
def test_schedule_errors(value, msg):
    with pytest.raises(ConfigError, match=msg):
        resolve_schedule(value, 4, name="r")


def test_select_names_globs():
    names = [f"blocks.{i}" for i in range(12)]
    assert select_names(names, None) == names
    assert select_names(names, ["blocks.1*"], ["blocks.11"]) == ["blocks.1", "blocks.10"]
    with pytest.raises(ConfigError, match="pattern 'block.*' matches no blocks"):
        select_names(names, ["block.*"], what="blocks")
    with pytest.raises(ConfigError, match="matches no"):
        select_names(names, None, ["head"])


def test_nested_train_section_round_trip_migration_and_hints():
    import yaml

    from vitkit import DistillConfig
    from vitkit.training import TrainConfig

    cfg = DistillConfig(train={"epochs": 3})
    assert cfg.train.epochs == 3 and cfg.train.lr == 2e-4  # other keys keep distill's own defaults
    assert cfg.replace(train={"lr": 1e-3}).train == TrainConfig(**{**cfg.train.to_dict(), "lr": 1e-3, "lr_scales": ()})
    back = DistillConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())), version=DistillConfig.version)
    assert back == cfg and hash(back) == hash(cfg)
    old = DistillConfig.from_dict({"epochs": 5, "lr": 1e-3, "loss": "hard"}, version=1)  # a version-1 artifact
    assert old.train.epochs == 5 and old.train.lr == 1e-3 and old.loss == "hard"
    with pytest.raises(ConfigError, match=r"TrainConfig keys: put them under 'train'"):
        DistillConfig.from_dict({"epochs": 5})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['epoch'\] in DistillConfig.train"):
        DistillConfig(train={"epoch": 5})
    with pytest.raises(ConfigError, match="TrainConfig.lr must be a positive number"):
        DistillConfig(train={"lr": 0})
