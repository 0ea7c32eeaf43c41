"""Registered method × model family: what each cell does, computed (never written by hand).

:func:`outcome` applies a method's registered example (``TransformSpec.example``, after its prerequisites) to a
tiny random-init model of a family (:data:`tests.conftest.FAMILIES`) and returns ``("ok", "")`` or
``("refused", message)`` for a named ``UnsupportedModelError``. ``tests/families/test_matrix.py`` asserts the
properties of every ``ok`` cell and that README's matrix is :func:`render` of these outcomes, so the README cannot
drift from the tests. Regenerate the README section with ``.venv/bin/python -m tests.families.matrix``.
"""

from __future__ import annotations

import functools
import re
import sys
import tempfile
from pathlib import Path

import torch

import vitkit
from vitkit.artifact import save_artifact
from vitkit.errors import UnsupportedModelError

from ..conftest import FAMILIES, family_images, make_family

SPECS = {s.name: s for s in vitkit.list_transforms()}
METHODS = sorted(SPECS)
FAMILY_NAMES = ["vit", *FAMILIES]
#: column titles in README (the timm class / model each tiny config stands for)
TITLES = {
    "vit": "ViT/DeiT",
    "swin": "Swin",
    "tiny_vit": "TinyViT",
    "efficientformer": "EfficientFormer",
    "eva02": "EVA-02",
    "siglip": "SigLIP (map head)",
    "vitamin": "ViTamin",
}
README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN, END = "<!-- family-matrix:begin -->", "<!-- family-matrix:end -->"


def build(family: str, seed: int = 0) -> torch.nn.Module:
    if family == "vit":
        from ..conftest import make_tiny

        return make_tiny("vit", seed=seed)
    return make_family(family, seed=seed)


def images(family: str) -> torch.Tensor:
    if family == "vit":
        return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return family_images(family)


def config(name: str, setting, model: torch.nn.Module, workdir: Path):
    """The config of ``setting`` (a spec's example/zero); a callable one gets ``workdir`` holding ``model``."""
    spec = SPECS[name]
    if callable(setting):
        if not (workdir / "model").exists():
            save_artifact(model, None, None, workdir / "model")
        setting = setting(workdir)
    return spec.config_cls(**dict(setting))


def apply_example(name: str, model: torch.nn.Module, x: torch.Tensor, workdir: Path, *, zero: bool = False) -> None:
    """Apply the prerequisites' examples, then ``name``'s example (or zero-strength setting) to ``model``."""
    for pre in SPECS[name].after:
        vitkit.apply_(model, config(pre, SPECS[pre].example, model, workdir), calib=x)
    setting = SPECS[name].zero if zero else SPECS[name].example
    vitkit.apply_(model, config(name, setting, model, workdir), calib=x)


@functools.cache
def outcome(name: str, family: str) -> tuple[str, str]:
    """``("ok", "")`` when ``name``'s example applies to ``family`` and the model then runs, ``("refused", msg)``
    for a named refusal. Any other exception propagates (a crash is a bug, not a cell)."""
    model, x = build(family), images(family)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            apply_example(name, model, x, Path(tmp))
        except UnsupportedModelError as exc:
            return "refused", str(exc).splitlines()[0]
    with torch.no_grad():
        out = model.eval()(x)
    out = out[0] if isinstance(out, tuple) else out
    if not torch.isfinite(out).all():
        raise AssertionError(f"{name} on {family}: non-finite outputs")
    return "ok", ""


def render() -> str:
    """The README matrix: ✓, or ✗ with a footnote holding the refusal message."""
    notes: dict[str, int] = {}
    lines = [
        "| method | " + " | ".join(TITLES[f] for f in FAMILY_NAMES) + " |",
        "|---|" + "---|" * len(FAMILY_NAMES),
    ]
    for name in METHODS:
        cells = []
        for fam in FAMILY_NAMES:
            status, msg = outcome(name, fam)
            if status == "ok":
                cells.append("✓")
                continue
            msg = re.sub(r"\s+", " ", msg)
            n = notes.setdefault(msg, len(notes) + 1)
            cells.append(f"✗ [{n}]")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"[{n}] {msg}  " for msg, n in notes.items()]
    return "\n".join([BEGIN, *lines, END])


def readme_section(text: str) -> str | None:
    start, end = text.find(BEGIN), text.find(END)
    return None if start < 0 or end < 0 else text[start : end + len(END)]


def write_readme() -> None:
    text = README.read_text()
    old = readme_section(text)
    if old is None:
        raise SystemExit(f"README has no {BEGIN} … {END} section")
    README.write_text(text.replace(old, render()))


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    import logging

    logging.disable(logging.WARNING)
    torch.set_num_threads(2)
    write_readme()
    sys.stdout.write(render() + "\n")
