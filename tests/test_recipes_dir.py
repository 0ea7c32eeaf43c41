"""Every example in recipes/ parses and dry-runs (on a tiny stand-in model, so no training is needed)."""

from pathlib import Path

import pytest
import yaml

from vitkit.artifact import save_artifact
from vitkit.recipe import parse_recipe, run_recipe

from .conftest import make_tiny

STAND_IN_DEPTH = 6  # as deep as the reference model, so recipes may name its blocks

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    assert RECIPES


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_dry_runs(path, tmp_path):
    data = yaml.safe_load(path.read_text())
    parse_recipe(data)  # the file as shipped is valid
    data["model"] = str(save_artifact(make_tiny(depth=STAND_IN_DEPTH), None, None, tmp_path / "model"))
    _, planned = run_recipe(parse_recipe(data), None, dry_run=True)
    assert len(planned.steps) == len(data.get("steps") or [])


@pytest.mark.slow
@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_really_runs(path, tmp_path):
    """The real run (steps applied, benchmarked, artifact written and reloaded) on a tiny stand-in model, with
    evaluation and timing scaled down; a recipe that needs a real trained model still exercises every step."""
    data = yaml.safe_load(path.read_text())
    data["model"] = str(save_artifact(make_tiny(depth=STAND_IN_DEPTH), None, None, tmp_path / "model"))
    for step in data.get("steps") or []:
        ((_, cfg),) = step.items()
        if isinstance(cfg, dict) and "epochs" in cfg:  # training steps: one epoch is enough to exercise them
            cfg["epochs"] = 1
            if "teacher" in cfg:  # distillation: a few hundred images
                cfg["limit"] = 512
        if "merge" in step:  # the listed fine-tuned checkpoints: tiny stand-ins of the same architecture
            cfg = step["merge"]
            cfg["models"] = [m if m == "self" else _tiny_file(tmp_path, m, i + 1) for i, m in enumerate(cfg["models"])]
            if cfg.get("base") not in (None, "self"):
                cfg["base"] = _tiny_file(tmp_path, cfg["base"], 0)
    _local_image_folders(data, tmp_path)
    data["eval"] = {**(data.get("eval") or {}), "limit": 64}
    data["bench"] = {"batch_sizes": [1, 4], "threads": 2, "repeats": 2, "latency_runs": 3}
    model, report = run_recipe(parse_recipe(data), tmp_path / "out")
    assert len(report["steps"]) == len(data.get("steps") or [])
    assert report["variants"][-1]["top1"] is not None
    import vitkit

    assert [s.name for s in getattr(vitkit.load(tmp_path / "out"), "vitkit_steps", [])] == [
        s["name"] for s in report["steps"]
    ]


def _tiny_file(tmp_path, name: str, seed: int) -> str:
    from safetensors.torch import save_file

    path = tmp_path / Path(name).name
    tiny = make_tiny(seed=seed, depth=STAND_IN_DEPTH)
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(path))
    return str(path)


def _local_image_folders(data: dict, tmp_path) -> None:
    """``imagefolder:`` data in a recipe → a generated folder for the stand-in model (10 classes), same split
    rule; calibration capped to what its calib part holds (40 images)."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "images"
    for spec in (data.get("calib"), data.get("eval")):
        if not spec or not str(spec.get("data", "")).startswith("imagefolder:"):
            continue
        if not root.exists():
            rng = np.random.default_rng(0)
            for c in range(10):
                (root / f"c{c}").mkdir(parents=True)
                for i in range(40):
                    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / f"c{c}" / f"{i}.png")
        _, _, query = spec["data"].partition("?")
        opts = [o for o in query.split("&") if o and not o.startswith("classes=")]
        spec["data"] = f"imagefolder:{root}?" + "&".join(opts + ["classes=folder"])
        if "n" in spec:
            spec["n"] = min(spec["n"], 32)
