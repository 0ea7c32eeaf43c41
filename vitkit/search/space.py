"""The recipe space a search explores: axes of (transform, knob, values) in step order, plus a deployment axis.

```yaml
axes:                                   # in step order; a value of null or 0 leaves the step out
  - {transform: prune, param: ratio, values: [0, 0.25, 0.5], config: {importance: taylor}}
  - {transform: ptq, param: w_bits, values: [null, 8, 4], config: {a_bits: 8}}
  - {transform: tome, param: r, values: [0, 2, 4]}
recover: {distill: {train: {epochs: 1, lr: 0.0005}}}   # inserted after the structure steps of every pruned candidate
deploy: [torch, ort_int8]               # runtime each candidate is measured in
fidelity: {images: [100, 500], repeats: [2, 5]}   # successive-halving rungs: val images, timing repeats
eta: 2                                  # keep 1/eta of the candidates at each rung
batch_size: 64                          # throughput batch
```

``deploy``: ``torch`` (PyTorch eager, fake-quant if a ``ptq`` step is present), ``ort`` (ONNX Runtime fp32),
``ort_int8`` (vitkit's real int8 deployment: RepQ-ViT reparameterization + ORT dynamic int8, see
:mod:`vitkit.deploy`), ``torch_w8a8`` (``torch._int_mm`` W8A8 under ``torch.compile``) or ``auto`` (each
candidate runtime measured on this machine, the fastest within 1 pt of the candidate model chosen:
:mod:`vitkit.deploy.auto`). ``ort_int8`` candidates with a ``ptq`` step are skipped: ORT's dynamic int8 replaces the
step's quantization (and ``deploy_int8`` reparameterizes a float model itself), so they would repeat the
candidate without ``ptq``. The all-off candidate (the untouched model) is not searched: it is the baseline
every candidate is measured against.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..configs import read_yaml_file
from ..errors import ConfigError
from ..validate import check_int, check_ints

DEPLOYS = ("torch", "ort", "ort_int8", "torch_w8a8", "auto")
SPACE_KEYS = ("axes", "recover", "deploy", "fidelity", "eta", "batch_size")

#: The default space: pruning {0, 25, 50 % MACs} × PTQ {off, W8A8, W4A8} × ToMe r {0, 2, 4}, in PyTorch (26 step
#: combinations; the all-off one is the baseline) and, without PTQ, in ORT int8 (8): 34 candidates.
DEFAULT_SPACE: dict[str, Any] = {
    "axes": [
        {"transform": "prune", "param": "ratio", "values": [0, 0.25, 0.5], "config": {"importance": "taylor"}},
        {"transform": "ptq", "param": "w_bits", "values": [None, 8, 4], "config": {"a_bits": 8}},
        {"transform": "tome", "param": "r", "values": [0, 2, 4]},
    ],
    "recover": {"distill": {"train": {"epochs": 1, "lr": 0.0005, "batch_size": 32}}},
    "deploy": ["torch", "ort_int8"],
    "fidelity": {"images": [100, 500], "repeats": [2, 5]},
    "eta": 2,
    "batch_size": 64,
}


@dataclass(frozen=True)
class Axis:
    transform: str
    param: str
    values: tuple
    config: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Fidelity:
    """One successive-halving rung: accuracy on the first ``images`` val images, ``repeats`` timing samples."""

    images: int
    repeats: int

    def key(self) -> str:
        return f"i{self.images}-r{self.repeats}"


@dataclass(frozen=True)
class Candidate:
    """One point of the space: recipe steps (``[{name: config}]``, in order) and the runtime it is measured in."""

    steps: tuple
    deploy: str = "torch"

    @property
    def cid(self) -> str:
        blob = json.dumps([list(self.steps), self.deploy], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        parts = []
        for step in self.steps:
            ((name, cfg),) = step.items()
            knob = cfg.get("_knob")
            parts.append(f"{name}{'' if knob is None else '=' + str(knob)}")
        return "+".join(parts) + f"@{self.deploy}"

    def recipe_steps(self) -> list[dict]:
        """Steps as a recipe takes them (the ``_knob`` label key removed)."""
        return [{n: {k: v for k, v in c.items() if k != "_knob"}} for s in self.steps for n, c in s.items()]


@dataclass(frozen=True)
class SearchSpace:
    axes: tuple[Axis, ...]
    recover: tuple = ()
    deploy: tuple[str, ...] = ("torch",)
    fidelities: tuple[Fidelity, ...] = (Fidelity(100, 2), Fidelity(500, 5))
    eta: int = 2
    batch_size: int = 64
    raw: dict = field(default_factory=dict, compare=False)

    def candidates(self) -> list[Candidate]:
        """Every combination of axis values × deploy, in a fixed order, minus the all-off point and skipped combos."""
        out = []
        for combo in itertools.product(*(a.values for a in self.axes)):
            steps, pruned = [], False
            for axis, value in zip(self.axes, combo, strict=True):
                if value is None or value == 0:
                    continue
                steps.append({axis.transform: {**axis.config, axis.param: value, "_knob": value}})
                pruned |= axis.transform == "prune"
            if not steps:
                continue
            if pruned and self.recover:
                last_prune = max(i for i, s in enumerate(steps) if "prune" in s)
                steps[last_prune + 1 : last_prune + 1] = [copy.deepcopy(dict(r)) for r in self.recover]
            quantized = any("ptq" in s or "mixed_ptq" in s for s in steps)
            for dep in self.deploy:
                if dep == "ort_int8" and quantized:
                    continue
                out.append(Candidate(tuple(steps), dep))
        if not out:
            raise ConfigError("the search space has no candidate: give at least one axis a non-zero value")
        return out


def _positive_ints(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError(f"search space {where} must be a non-empty list of positive ints, got {value!r}")
    return check_ints(value, f"search space {where}", low=1)


def parse_space(data: dict | None) -> SearchSpace:
    """Validate a space mapping (see the module docstring) into a :class:`SearchSpace`; ``None`` = the default."""
    from ..recipe import parse_steps

    data = copy.deepcopy(DEFAULT_SPACE if data is None else data)
    if not isinstance(data, dict):
        raise ConfigError(f"a search space must be a mapping with keys {list(SPACE_KEYS)}")
    unknown = sorted(set(data) - set(SPACE_KEYS))
    if unknown:
        raise ConfigError(f"unknown search space key(s) {unknown}; valid keys: {list(SPACE_KEYS)}")
    raw_axes = data.get("axes")
    if not isinstance(raw_axes, list) or not raw_axes:
        raise ConfigError("search space 'axes' must be a non-empty list of {transform, param, values, config}")
    axes = []
    for i, a in enumerate(raw_axes):
        if not isinstance(a, dict) or not {"transform", "param", "values"} <= set(a):
            raise ConfigError(f"search space axis {i} needs 'transform', 'param' and 'values', got {a!r}")
        extra = sorted(set(a) - {"transform", "param", "values", "config"})
        if extra:
            raise ConfigError(f"search space axis {i} has unknown key(s) {extra}; valid: transform/param/values/config")
        values = a["values"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"search space axis {i} ({a['transform']}): 'values' must be a non-empty list")
        axis = Axis(str(a["transform"]), str(a["param"]), tuple(values), dict(a.get("config") or {}))
        for v in values:  # every value must make a valid config (clear errors before any evaluation)
            if v is not None and v != 0:
                parse_steps([{axis.transform: {**axis.config, axis.param: v}}])
        axes.append(axis)
    recover = data.get("recover") or {}
    if not isinstance(recover, dict):
        raise ConfigError("search space 'recover' must be a mapping like {distill: {train: {epochs: 1}}}")
    recover_steps = tuple({k: dict(v or {})} for k, v in recover.items())
    parse_steps([dict(s) for s in recover_steps])
    deploy = data.get("deploy") or ["torch"]
    deploy = [deploy] if isinstance(deploy, str) else list(deploy)
    bad = [d for d in deploy if d not in DEPLOYS]
    if bad:
        raise ConfigError(f"search space 'deploy' values must be in {list(DEPLOYS)}, got {bad}")
    fid = data.get("fidelity") or {}
    if not isinstance(fid, dict) or set(fid) - {"images", "repeats"}:
        raise ConfigError("search space 'fidelity' must be a mapping {images: [...], repeats: [...]}")
    images = _positive_ints(fid.get("images", [100, 500]), "fidelity.images")
    repeats = _positive_ints(fid.get("repeats", [2] * (len(images) - 1) + [5]), "fidelity.repeats")
    if len(images) != len(repeats):
        raise ConfigError(f"fidelity.images and fidelity.repeats need one entry per rung, got {images} and {repeats}")
    if list(images) != sorted(images) or list(repeats) != sorted(repeats):
        raise ConfigError("fidelity rungs must not decrease: list images and repeats from cheap to full")
    eta = data.get("eta", 2)
    check_int(eta, "search space 'eta'", low=2, why=" (keep 1/eta per rung)")
    bs = check_int(data.get("batch_size", 64), "search space 'batch_size'", low=1)
    space = SearchSpace(
        axes=tuple(axes),
        recover=recover_steps,
        deploy=tuple(deploy),
        fidelities=tuple(Fidelity(i, r) for i, r in zip(images, repeats, strict=True)),
        eta=eta,
        batch_size=bs,
        raw=data,
    )
    check_space_order(space)
    return space


def check_space_order(space: SearchSpace) -> None:
    """Raise the registry's :class:`OrderError` (naming both steps) if any candidate's steps are out of order."""
    from ..api import check_order
    from ..registry import get_transform, list_transforms

    list_transforms()
    for cand in space.candidates():
        names = [next(iter(s)) for s in cand.steps]
        check_order([(n, get_transform(n).kind) for n in names])


def read_space(path: str | Path | None) -> SearchSpace:
    return parse_space(None if path is None else read_yaml_file(path, what="search space"))
