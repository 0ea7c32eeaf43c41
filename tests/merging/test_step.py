"""The ``merge`` recipe step: merges listed checkpoints into the model in place, like vitkit.merge."""

import pytest
import torch
from safetensors.torch import save_file

import vitkit
from vitkit.errors import ConfigError
from vitkit.merging import MergeStepConfig

from ..conftest import make_tiny


def test_merge_step_matches_functional_merge(tmp_path):
    model = make_tiny("vit", seed=3)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"ft{i}.safetensors"))
        save_file({k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}, paths[-1])
    cfg = MergeStepConfig(method="task_arithmetic", models=tuple(paths), base="self", params={"scaling": 0.3})
    want = vitkit.merge(paths, vitkit.TaskArithmeticConfig(scaling=0.3), base=base)
    planned = vitkit.apply_(model, [cfg], dry_run=True)
    assert torch.equal(model.state_dict()["pos_embed"], base["pos_embed"])  # a dry run changes nothing
    vitkit.apply_(model, [cfg])
    assert planned.steps and all(torch.allclose(model.state_dict()[k], want[k]) for k in want)


def test_merge_step_bad_input():
    with pytest.raises(ConfigError, match="unknown key"):
        MergeStepConfig(method="ties", models=("a",), base="b", params={"dens": 0.2})
    with pytest.raises(ConfigError, match="base"):
        MergeStepConfig(method="ties", models=("a",))
    with pytest.raises(ConfigError, match="vitkit.merge"):
        MergeStepConfig(method="fw_merging", models=("a",), base="b")
