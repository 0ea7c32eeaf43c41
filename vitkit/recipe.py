"""Recipes: YAML validated into typed objects, then run into an artifact + report.

```yaml
model: vitkit_mnist_tiny            # timm name | preset | .safetensors/.pth file | artifact dir
arch: null                          # for bare checkpoint files: timm name or {name, kwargs}
import: [my_models]                 # optional: user modules / .py files imported first (register timm models)
steps:                              # transforms in order (see `vitkit list`)
  - tome: {r: 8}
eval: {data: mnist5k, split: test}
bench: {batch_sizes: [1, 16], threads: 2}
calib: {data: mnist5k, split: train, n: 32, seed: 0}
```
"""

from __future__ import annotations

import copy
import logging
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .configs import TransformConfig, read_yaml_file
from .errors import ConfigError
from .registry import get_transform, list_transforms
from .ui import import_modules
from .validate import check_int, check_number

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSpec:
    data: str | None = "mnist5k"
    split: str = "test"
    limit: int | None = None
    #: measure patch-corruption and one-pixel-shift robustness next to the original (vitkit.bench.robustness)
    robustness: bool = True
    #: class-prompt embedding file (``vitkit zero-shot-embed``): the model's embedding head becomes a CLIP
    #: zero-shot classifier before any step (:func:`vitkit.models.zero_shot.zero_shot_head`)
    zero_shot: str | None = None


@dataclass(frozen=True)
class BenchSpec:
    batch_sizes: tuple[int, ...] = (1, 16)
    threads: int = 2
    repeats: int = 7
    latency_runs: int = 30
    #: with several steps, also measure the model after each step (cumulative), not only the composed one
    per_step: bool = True


@dataclass(frozen=True)
class CalibSpec:
    data: str = "mnist5k"
    split: str = "train"
    n: int = 32
    seed: int = 0


@dataclass(frozen=True)
class DeploySpec:
    """Where the composed model runs, measured next to the original.

    ``runtime``: ``auto`` — every candidate runtime measured on this machine on the composed model (speed, and
    top-1 on ``eval_images`` images of the calibration split, not the test split the report uses), the fastest
    within ``max_drop`` points chosen (:mod:`vitkit.deploy.auto`; ``candidates`` narrows the list); a
    :func:`vitkit.deploy.deploy` runtime name (``torch-w8a8``, ``ort-int8``, ...); or ``onnxruntime`` with
    ``int8``: ``dynamic`` (RepQ reparameterization + ORT dynamic int8), ``qdq`` (our calibrated scales; needs a
    ``ptq`` step) or ``none`` (fp32), beside the original in ORT fp32. An ONNX winner's file and ``runtime.json``
    are written into the artifact."""

    runtime: str | None = None
    int8: str = "dynamic"
    max_drop: float = 1.0
    candidates: tuple[str, ...] | None = None
    eval_images: int = 256

    def __post_init__(self) -> None:
        from .deploy import RUNTIMES
        from .deploy.auto import CANDIDATES

        valid = ("onnxruntime", *RUNTIMES)
        if self.runtime is not None and self.runtime not in valid:
            raise ConfigError(f"deploy.runtime must be one of {', '.join(valid)} (or omitted), got {self.runtime!r}")
        if self.int8 not in ("dynamic", "qdq", "none"):
            raise ConfigError(f"deploy.int8 must be one of dynamic, qdq, none; got {self.int8!r}")
        check_number(self.max_drop, "deploy.max_drop", low=0.0)
        check_int(self.eval_images, "deploy.eval_images", low=1)
        for c in self.candidates or ():
            if c not in CANDIDATES:
                raise ConfigError(f"deploy.candidates: unknown runtime {c!r}; valid: {', '.join(CANDIDATES)}")


@dataclass(frozen=True)
class Recipe:
    model: str
    steps: tuple[TransformConfig, ...] = ()
    arch: Any = None
    model_kwargs: dict = field(default_factory=dict)
    name: str = ""
    eval: EvalSpec = EvalSpec()
    bench: BenchSpec = BenchSpec()
    calib: CalibSpec = CalibSpec()
    deploy: DeploySpec = DeploySpec()
    imports: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return "+".join(get_step_name(c) for c in self.steps) or "baseline"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "arch": self.arch,
            "model_kwargs": dict(self.model_kwargs),
            "name": self.name,
            "steps": [{get_step_name(c): c.to_dict()} for c in self.steps],
            "eval": _dc_dict(self.eval),
            "bench": _dc_dict(self.bench),
            "calib": _dc_dict(self.calib),
            "deploy": _dc_dict(self.deploy),
            **({"import": list(self.imports)} if self.imports else {}),
        }


def _dc_dict(obj) -> dict[str, Any]:
    return {f.name: list(v) if isinstance(v := getattr(obj, f.name), tuple) else v for f in fields(obj)}


def get_step_name(cfg: TransformConfig) -> str:
    from .registry import spec_for_config

    return spec_for_config(cfg).name


def _section(cls, data: Any, where: str):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"recipe '{where}' must be a mapping, got {type(data).__name__}")
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in recipe '{where}'; valid keys: {valid}")
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**data)


TOP_LEVEL = ("model", "arch", "model_kwargs", "name", "steps", "eval", "bench", "calib", "deploy", "import")


def parse_steps(steps: Any) -> tuple[TransformConfig, ...]:
    list_transforms()
    if steps is None:
        return ()
    if not isinstance(steps, list):
        raise ConfigError("recipe 'steps' must be a list like [{tome: {r: 8}}, ...]")
    out = []
    for i, step in enumerate(steps):
        if isinstance(step, str):
            step = {step: {}}
        if not isinstance(step, dict) or len(step) != 1:
            raise ConfigError(f"recipe step {i} must be one mapping {{<transform>: {{<config>}}}}, got {step!r}")
        ((name, params),) = step.items()
        spec = get_transform(str(name))
        if params is not None and not isinstance(params, dict):
            raise ConfigError(f"recipe step {i} ({name}): config must be a mapping, got {params!r}")
        out.append(spec.config_cls.from_dict(params or {}))
    return tuple(out)


def parse_recipe(data: Any, *, base: str | Path | None = None) -> Recipe:
    """A validated :class:`Recipe`; its ``import:`` modules are imported first (``.py`` paths may be relative to
    ``base``, the recipe's folder), so steps, presets and architectures they register are known."""
    if not isinstance(data, dict):
        raise ConfigError(f"a recipe must be a mapping with keys {list(TOP_LEVEL)}")
    unknown = sorted(set(data) - set(TOP_LEVEL))
    if unknown:
        raise ConfigError(f"unknown recipe key(s) {unknown}; valid keys: {list(TOP_LEVEL)}")
    if not data.get("model"):
        raise ConfigError("recipe needs 'model': a timm name, preset, checkpoint file or artifact dir")
    imports = data.get("import") or []
    imports = [imports] if isinstance(imports, str) else imports
    if not isinstance(imports, list) or not all(isinstance(m, str) for m in imports):
        raise ConfigError(f"recipe 'import' must be a list of module names or .py paths, got {imports!r}")
    import_modules(imports, where="recipe import:", base=base)
    return Recipe(
        imports=tuple(imports),
        model=str(data["model"]),
        steps=parse_steps(data.get("steps")),
        arch=data.get("arch"),
        model_kwargs=dict(data.get("model_kwargs") or {}),
        name=str(data.get("name") or ""),
        eval=_section(EvalSpec, data.get("eval"), "eval"),
        bench=_section(BenchSpec, data.get("bench"), "bench"),
        calib=_section(CalibSpec, data.get("calib"), "calib"),
        deploy=_section(DeploySpec, data.get("deploy"), "deploy"),
    )


def read_recipe(path: str | Path) -> Recipe:
    return parse_recipe(read_yaml_file(path, what="recipe"), base=Path(path).parent)


def model_label(model, spec: str) -> str:
    """How reports name the model: the timm name a user gave, else (a file or artifact path, e.g. a cache
    directory) its architecture, input size and classes — never a machine's path."""
    if not (Path(str(spec)).exists() or "/" in str(spec)):
        return str(spec)
    from .adapters import adapter_for
    from .errors import UnsupportedModelError

    try:
        info = adapter_for(model).describe(model)
    except UnsupportedModelError:
        return type(model).__name__
    h, w = info.img_size
    return f"{info.arch} {h}×{w}, {info.num_classes} classes"


def run_recipe(recipe: Recipe, out: str | Path | None, *, dry_run: bool = False, progress=None):
    """Load the model, apply the steps to a copy, benchmark it against the untouched original and
    (unless ``dry_run``) write the artifact to ``out``. Returns ``(model, report_dict_or_Report)``."""
    from .api import apply_
    from .artifact import check_output_path, save_artifact
    from .bench import benchmark
    from .bench.core import check_finite
    from .bench.robustness import RobustnessSpec
    from .data import calibration_set, load_dataset
    from .models import load

    say = progress or (lambda msg: _log.info(msg))
    if out is not None and not dry_run:
        check_output_path(out)  # refuse an unwritable output before any work
    say(f"loading {recipe.model}")
    baseline = load(recipe.model, arch=recipe.arch, **recipe.model_kwargs)
    check_finite(baseline)  # the same one-line refusal as `vitkit bench` / eval / export
    if recipe.eval.zero_shot:
        from .models.zero_shot import read_class_embeddings, zero_shot_head

        zero_shot_head(baseline, read_class_embeddings(recipe.eval.zero_shot)[0])
    candidate = copy.deepcopy(baseline)
    calib = None
    if (recipe.steps or recipe.deploy.runtime) and not dry_run:
        calib = calibration_set(
            load_dataset(recipe.calib.data, recipe.calib.split, model=baseline), recipe.calib.n, seed=recipe.calib.seed
        )
    say(f"applying {len(recipe.steps)} step(s)" if not dry_run else "planning steps (dry run)")
    if dry_run:
        return candidate, apply_(candidate, list(recipe.steps), calib=calib, dry_run=True)
    apply_(candidate, list(recipe.steps), calib=None, dry_run=True)  # order and configs checked before any work
    intermediate: list[tuple[str, Any]] = []
    records = []
    for i, step in enumerate(recipe.steps):
        say(f"step {i + 1}/{len(recipe.steps)}: {get_step_name(step)}")
        records += apply_(candidate, [step], calib=calib).steps
        if recipe.bench.per_step and i < len(recipe.steps) - 1:
            label = "+".join(get_step_name(s) for s in recipe.steps[: i + 1])
            intermediate.append((row_label(label, candidate), copy.deepcopy(candidate)))
    data = load_dataset(recipe.eval.data, recipe.eval.split, model=baseline) if recipe.eval.data else None
    say("benchmarking (baseline and candidate interleaved)")
    b = recipe.bench
    common = dict(
        batch_sizes=tuple(b.batch_sizes),
        threads=b.threads,
        repeats=b.repeats,
        latency_runs=b.latency_runs,
        eval_limit=recipe.eval.limit,
        robust=RobustnessSpec(limit=recipe.eval.limit or 500) if recipe.eval.robustness else None,
    )
    with tempfile.TemporaryDirectory(prefix="vitkit-deploy-") as tmp:
        extra_files = {}
        if recipe.deploy.runtime not in (None, "onnxruntime"):
            spec = recipe.deploy
            say(
                "measuring candidate runtimes on this machine"
                if spec.runtime == "auto"
                else f"deploying: {spec.runtime}"
            )
            runner, files = deploy_runtime(candidate, spec, calib, recipe, baseline, Path(tmp))
            extra_files.update(files)
            if recipe.steps:
                intermediate.append((row_label(recipe.label, candidate), candidate))
            name = f"{recipe.label} @ {getattr(runner, 'auto_candidate', None) or spec.runtime}"
            result = benchmark(runner, data, baseline, name=name, candidates=intermediate, **common)
        elif recipe.deploy.runtime and recipe.steps:
            say("deploying to ONNX Runtime")
            base_ort, cand_ort, mode = deploy_onnx(baseline, candidate, recipe.deploy, calib, Path(tmp))
            extra_files["model.onnx"] = cand_ort.path
            intermediate += [(recipe.label, candidate), ("baseline @ onnxruntime fp32", base_ort)]
            result = benchmark(
                cand_ort, data, baseline, name=f"{recipe.label} @ onnxruntime {mode}", candidates=intermediate, **common
            )
        elif recipe.steps:
            name = row_label(recipe.label, candidate)
            result = benchmark(candidate, data, baseline, name=name, candidates=intermediate, **common)
        else:
            result = benchmark(baseline, data, name="baseline", **common)
        report = result.to_dict()
        report["steps"] = [r.to_dict() for r in records]
        if recipe.deploy.runtime not in (None, "onnxruntime"):
            report["runtime"] = runtime_record(runner)
        if out is not None:
            title = f"vitkit: {recipe.label} on {model_label(baseline, recipe.model)}"
            save_artifact(candidate, recipe.to_dict(), report, out, title=title, extra_files=extra_files)
    return candidate, report


def row_label(label: str, model) -> str:
    """A report row's name; a fake-quant model says so (it simulates int8 in float: slower than fp32, not a
    deployment)."""
    from .quant import quantizers

    return f"{label} (fake-quant sim.)" if quantizers(model) else label


def deploy_runtime(candidate, spec: DeploySpec, calib, recipe: Recipe, baseline, tmp: Path):
    """The composed model on ``spec.runtime`` (``auto``: chosen among measured candidates, scored on
    ``spec.eval_images`` images of the calibration split). Returns the runner and the files for the artifact."""
    import torch

    from .data import iterate_batches, load_dataset
    from .deploy import deploy

    out = tmp / "deployed"
    kw = {}
    if spec.runtime == "auto":
        ds = load_dataset(recipe.calib.data, recipe.calib.split, model=baseline)
        xs, ys = zip(*iterate_batches(ds, 64, limit=spec.eval_images), strict=True)
        kw = {"data": (torch.cat(xs), torch.cat([torch.as_tensor(y) for y in ys])), "max_drop": spec.max_drop}
        kw["candidates"] = spec.candidates
    runner = deploy(candidate, out, runtime=spec.runtime, calib=calib, example=calib[:2], **kw)
    files = {p.name: str(p) for p in sorted(out.glob("*")) if p.is_file()} if out.exists() else {}
    return runner, files


def runtime_record(runner) -> dict[str, Any]:
    """What the report says about the runtime: the auto choice (every candidate, the winner, why) or the name."""
    choice = getattr(runner, "choice", None)
    if choice is None:
        return {"chosen": getattr(runner, "runtime", None) or getattr(runner, "graph", None)}
    return {**choice.to_dict(), "markdown": choice.markdown()}


def deploy_onnx(baseline, candidate, spec: DeploySpec, calib, tmp: Path):
    """ONNX Runtime sessions of the original (fp32) and of the composed model (``spec.int8``), both through
    :func:`vitkit.deploy.deploy`."""
    from .deploy import deploy
    from .quant import quantizers

    example = calib[:2]
    runtime = {"dynamic": "ort-int8", "qdq": "ort-qdq", "none": "ort-fake" if quantizers(candidate) else "ort-fp32"}
    base_ort = deploy(baseline, tmp, runtime="ort-fp32", example=example, name="baseline.onnx")
    cand_ort = deploy(candidate, tmp, runtime=runtime[spec.int8], example=example, calib=calib, name="model.onnx")
    label = {"dynamic": "int8 (dynamic)", "qdq": "int8 (QDQ)", "fake": "fake-quant", "float": "fp32"}[cand_ort.graph]
    return base_ort, cand_ort, label
