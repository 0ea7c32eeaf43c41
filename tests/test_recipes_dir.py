"""Every example in recipes/ parses and dry-runs (on a tiny stand-in model, so no training is needed)."""

from pathlib import Path

import pytest
import yaml

from vitkit.artifact import save_artifact
from vitkit.recipe import parse_recipe, run_recipe

from .conftest import make_tiny

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    assert RECIPES


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_dry_runs(path, tmp_path):
    data = yaml.safe_load(path.read_text())
    parse_recipe(data)  # the file as shipped is valid
    data["model"] = str(save_artifact(make_tiny(), None, None, tmp_path / "model"))
    _, planned = run_recipe(parse_recipe(data), None, dry_run=True)
    assert len(planned.steps) == len(data.get("steps") or [])
