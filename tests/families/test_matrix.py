"""Every registered method × every model family (issue 23), on tiny random-init configs.

Each cell either works — and then owes the registry's properties: zero strength is the identity, apply → save →
load reproduces the outputs — or is refused with a named ``UnsupportedModelError`` (a skip here, with the
message). The cells the issue requires are asserted to work, and README's matrix is checked to be exactly what
these outcomes render (``tests/families/matrix.py``), so it cannot drift.
"""

from __future__ import annotations

import copy

import pytest
import torch

from vitkit.artifact import load_artifact, save_artifact

from . import matrix as M

#: cells that must work (the issue's "must work" column), per family
REQUIRED = {
    "vit": set(M.METHODS) - {"evit"},
    "siglip": set(M.METHODS) - {"evit"},  # EViT ranks tokens by [CLS] attention: a map-head tower has no [CLS]
    "eva02": set(M.METHODS),
    "vitamin": set(M.METHODS) - {"evit"},  # EViT ranks tokens by [CLS] attention: ViTamin pools by average, no [CLS]
    # windowed attention on a fixed grid: token reduction, early exit and prompts are refused by name
    "swin": {"ptq", "mixed_ptq", "precision", "prune", "merge", "lora", "lora_merge", "adapter", "distill", "finetune"},
    # conv + attention hybrids: tokens on a fixed grid (convs, attention biases): token methods refused by name
    "tiny_vit": set(M.METHODS) - {"tome", "evit", "pitome", "hiprune", "random_drop", "early_exit", "prompt"},
    "efficientformer": set(M.METHODS) - {"tome", "evit", "pitome", "hiprune", "random_drop", "early_exit", "prompt"},
}


def _outputs(model, x):
    with torch.no_grad():
        out = model.eval()(x)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("family", M.FAMILY_NAMES)
@pytest.mark.parametrize("name", M.METHODS)
def test_cell(name, family, tmp_path):
    status, msg = M.outcome(name, family)
    if name in REQUIRED.get(family, ()):
        assert status == "ok", f"{name} must work on {family}: {msg}"
    if status == "refused":
        assert msg.strip(), "a refusal names the reason"
        pytest.skip(f"refused by name: {msg}")
    spec, x = M.SPECS[name], M.images(family)
    if spec.zero is not None:
        model = M.build(family)
        reference = _outputs(copy.deepcopy(model), x)
        M.apply_example(name, model, x, tmp_path / "zero", zero=True)
        torch.testing.assert_close(_outputs(model, x), reference, rtol=1e-5, atol=1e-5)
    model = M.build(family)
    M.apply_example(name, model, x, tmp_path / "example")
    expected = _outputs(model, x)
    save_artifact(model, None, None, tmp_path / "artifact")
    loaded = load_artifact(tmp_path / "artifact")
    torch.testing.assert_close(_outputs(loaded, x), expected, rtol=1e-5, atol=1e-5)


def test_readme_matrix_is_generated_from_these_tests():
    section = M.readme_section(M.README.read_text())
    assert section is not None, "README lacks the family matrix section"
    assert section == M.render(), "README's family matrix is stale: run `.venv/bin/python -m tests.families.matrix`"
