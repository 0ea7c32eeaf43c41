"""Artifacts: ``model.safetensors`` + ``recipe.resolved.yaml`` + ``report.json`` + ``report.md`` (+ PNGs).

Loading rebuilds the base architecture, replays structural/numeric steps, loads the weights strictly,
then re-applies runtime patches. Every file is written atomically, and a whole artifact directory is
staged beside its destination and swapped in with a rename, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch.nn as nn
import yaml

from ._io import state_dict_for_saving, swap_in_dir
from .errors import CheckpointError, ConfigError
from .history import set_step_history, step_history
from .models.load import DIRECTORY_LOADERS

_log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
RECIPE = "recipe.resolved.yaml"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOT = "accuracy_vs_throughput.png"
REPORT_HTML = "report.html"
FORMAT_VERSION = 1


def resolved_recipe(model: nn.Module, recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything needed to rebuild ``model``: architecture, every step with config and decisions."""
    from ._version import __version__
    from .models.load import arch_record, check_plain_record

    record = arch_record(model)
    check_plain_record(record)  # a class-valued kwarg (act_layer=nn.ReLU) → one ConfigError, nothing written
    resolved: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "vitkit": __version__,
        "model": record,
        "steps": [s.to_dict() for s in step_history(model)],
    }
    if recipe:
        resolved["recipe"] = _plain(recipe)
    return resolved


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if hasattr(obj, "to_dict"):
        return _plain(obj.to_dict())
    return obj


def _report_dict(report: Any) -> dict[str, Any] | None:
    if report is None:
        return None
    if isinstance(report, dict):
        return report
    if hasattr(report, "to_dict"):
        return report.to_dict()
    raise TypeError(f"report must be a dict or have to_dict(), got {type(report).__name__}")


def save_artifact(
    model: nn.Module,
    recipe: dict[str, Any] | None,
    report: Any,
    directory: str | Path,
    *,
    title: str = "",
    extra_files: dict[str, str | Path] | None = None,
) -> Path:
    """Write an artifact directory for ``model``; replaces an existing *artifact* at ``directory`` atomically.
    ``extra_files`` maps a file name inside the artifact to a file to copy there (e.g. the deployed ONNX)."""
    from safetensors.torch import save

    from .report import markdown_report, plot_accuracy_vs_throughput
    from .report_html import html_report

    directory = check_output_path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{directory.name}.stage-", dir=directory.parent))
    try:
        (stage / WEIGHTS).write_bytes(save(state_dict_for_saving(model), metadata={"format": "pt"}))
        resolved = resolved_recipe(model, recipe)
        (stage / RECIPE).write_text(yaml.safe_dump(resolved, sort_keys=False))
        rep = _report_dict(report)
        if rep is not None:
            (stage / REPORT_JSON).write_text(json.dumps(_plain(rep), indent=2, default=str) + "\n")
            if "variants" in rep:
                md = markdown_report(rep, title=title or "vitkit report", steps=resolved["steps"])
                (stage / REPORT_MD).write_text(md)
                plot = plot_accuracy_vs_throughput(rep["variants"], stage / PLOT, title=title)
                images = {"accuracy vs throughput": plot.read_bytes()} if plot else {}
                page = html_report(rep, title=title or "vitkit report", steps=resolved["steps"], images=images)
                (stage / REPORT_HTML).write_text(page)
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, stage / name)
        swap_in_dir(stage, directory)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _log.info("artifact written to %s", directory)
    return directory


def check_output_path(directory: str | Path) -> Path:
    """Refuse an output path save_artifact could not write (or would clobber): call it before any work."""
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or (any(directory.iterdir()) and not is_artifact(directory))):
        raise ConfigError(f"output {directory} exists and is not a vitkit artifact: choose another output path")
    blocker = next((p for p in directory.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ConfigError(f"cannot write {directory}: {blocker} is a file, not a directory; choose another output path")
    if blocker is not None and not os.access(blocker, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {directory}: {blocker} is not writable; choose another output path")
    return directory


def is_artifact(directory: str | Path) -> bool:
    return (Path(directory) / RECIPE).is_file()


def load_artifact(directory: str | Path) -> nn.Module:
    """Rebuild a model from an artifact: architecture → structural/numeric replays → strict weights → runtime."""
    from .models.load import ARCH_ATTR, build_arch, load_state_dict_strict, read_state_dict
    from .registry import get_transform, list_transforms
    from .report import StepRecord

    directory = Path(directory)
    if not is_artifact(directory):
        raise CheckpointError(f"{directory} is not a vitkit artifact (no {RECIPE}); pass a model file or timm name")
    try:
        resolved = yaml.safe_load((directory / RECIPE).read_text())
    except yaml.YAMLError as exc:
        raise CheckpointError(f"corrupt {directory / RECIPE}: {str(exc).splitlines()[0]}") from None
    if not isinstance(resolved, dict) or "model" not in resolved:
        raise CheckpointError(f"{directory / RECIPE} has no 'model' entry: not a vitkit artifact")
    if int(resolved.get("format", 1)) > FORMAT_VERSION:
        raise CheckpointError(f"{directory} was written by a newer vitkit (format {resolved['format']}): upgrade")
    list_transforms()  # make sure built-in transforms are registered
    arch = resolved["model"]
    model = build_arch(arch["name"], arch.get("kwargs") or {})
    setattr(model, ARCH_ATTR, copy.deepcopy(arch))  # provenance beyond name/kwargs (e.g. the HF source config)
    steps = [StepRecord(**s) for s in resolved.get("steps") or []]
    specs = [get_transform(s.name) for s in steps]
    for spec, step in zip(specs, steps, strict=True):
        if spec.kind != "runtime":
            _restore(spec, model, step)
        elif spec.prepare is not None:  # runtime step owning parameters: create them before the strict load
            spec.prepare(model, spec.config_cls.from_dict(step.config, version=step.version), step.decisions)
    load_state_dict_strict(model, read_state_dict(directory / WEIGHTS), source=str(directory / WEIGHTS))
    for spec, step in zip(specs, steps, strict=True):
        if spec.kind == "runtime":
            _restore(spec, model, step)
    set_step_history(model, steps)
    model.eval()
    return model


def _restore(spec, model: nn.Module, step) -> None:
    cfg = spec.config_cls.from_dict(step.config, version=step.version)
    if spec.restore is not None:
        spec.restore(model, cfg, step.decisions)
    elif spec.kind == "runtime":
        spec.apply(model, cfg, calib=None, dry_run=False)
    elif spec.kind in ("structure", "numerics"):
        raise CheckpointError(f"transform {spec.name!r} cannot be restored from an artifact (no restore hook)")


DIRECTORY_LOADERS.append(load_artifact)  # vitkit.load(<artifact dir>) reads artifacts through this


def recorded_eval_data(path: str | Path) -> str | None:
    """The dataset an artifact's recipe evaluated on (``eval.data``), if ``path`` is an artifact that records one."""
    if not is_artifact(path):
        return None
    resolved = yaml.safe_load((Path(path) / RECIPE).read_text()) or {}
    recipe = resolved.get("recipe") or {}
    found = (recipe.get("eval") or {}).get("data") or recipe.get("data")
    if found or not (Path(path) / REPORT_JSON).is_file():
        return found
    try:  # an artifact saved through the Python API: the data its report was measured on ("mnist5k/test")
        settings = json.loads((Path(path) / REPORT_JSON).read_text()).get("settings") or {}
    except (json.JSONDecodeError, AttributeError):
        return None
    data = settings.get("data")
    if not isinstance(data, str) or not data:
        return None
    head, _, tail = data.rpartition("/")
    return head if head and tail in ("train", "test", "val", "calib", "all") else data
