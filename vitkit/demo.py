"""``vitkit demo``: the reference model (trained once, cached), the default recipe, the report."""

from __future__ import annotations

import logging
from pathlib import Path

from .artifact import is_artifact
from .reference import cache_dir, reference_key, train_reference

_log = logging.getLogger(__name__)

#: The composed default recipe: W8A8 RepQ-ViT PTQ, then ToMe r=4, measured in PyTorch after each step, then
#: deployed with ``runtime: auto`` (every candidate runtime measured on this machine, the fastest within 1 pt).
DEMO_STEPS: list[dict] = [{"ptq": {"w_bits": 8, "a_bits": 8, "method": "repq"}}, {"tome": {"r": 4}}]
DEMO_DEPLOY = {"runtime": "auto", "max_drop": 1.0}


def reference_artifact(*, retrain: bool = False, progress=None, say=None) -> Path:
    """Path of the cached reference artifact, training it first if needed."""
    path = cache_dir() / f"reference-vitkit_mnist_tiny-mnist5k-seed0-{reference_key()}"
    if retrain or not is_artifact(path):
        if say:
            say(f"training the reference model once (cached at {path})")
        train_reference(path, progress=progress)
    elif say:
        say(f"using the cached reference model {path}")
    return path


def run_demo(out: str | Path = "vitkit-demo", *, retrain: bool = False, progress=None, say=None):
    from .recipe import parse_recipe, run_recipe
    from .registry import list_transforms

    ref = reference_artifact(retrain=retrain, progress=progress, say=say)
    available = {s.name for s in list_transforms()}
    steps = [s for s in DEMO_STEPS if next(iter(s)) in available]
    recipe = parse_recipe(
        {
            "model": str(ref),
            "name": "demo",
            "steps": steps,
            "eval": {"data": "mnist5k", "split": "test"},
            "bench": {"batch_sizes": [1, 64], "threads": 2},
            "deploy": DEMO_DEPLOY,
        }
    )
    if say:
        say(f"running the default recipe: {steps or 'baseline benchmark only'}")
    _, report = run_recipe(recipe, out)
    return report, Path(out)
