"""The mergekit-like ``merge.yaml`` read by ``vitkit merge``.

```yaml
merge_method: ties                 # one of vitkit.merging.list_merge_methods()
base_model: pretrained.safetensors # file or artifact dir (task-vector methods need it)
models:
  - model: ft_a.safetensors
    parameters: {weight: 1.0}      # per-model weight (average / task_arithmetic)
  - model: ft_b/                   # an artifact dir
parameters: {density: 0.2, scaling: 1.0}   # the method's config fields
filter: {targets: ["*attn*", "*mlp*"], skip: ["*.bias"]}   # tensor-name globs; the rest is copied from the base
arch: vit_tiny_patch16_224         # optional: write a loadable artifact (else weights + resolved YAML only)
dtype: float32                     # optional output dtype
```
Relative paths are relative to the YAML file. Methods that run the network (greedy_soup, fw_merging, regmean,
pleas) need an evaluation set / objective / calibration data and are Python-API only for now.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..configs import TransformConfig, read_yaml_file
from ..errors import ConfigError
from ..registry import get_merge_method, list_merge_methods

TOP_KEYS = ("merge_method", "base_model", "models", "parameters", "filter", "arch", "dtype")
DTYPES = ("float32", "float16", "bfloat16", "float64")


@dataclass
class MergePlan:
    method: str
    cfg: TransformConfig
    models: list[str]
    base: str | None
    arch: Any
    dtype: str | None

    def resolved(self) -> dict[str, Any]:
        return {
            "merge_method": self.method,
            "base_model": self.base,
            "models": list(self.models),
            "config": {"class": type(self.cfg).__name__, **self.cfg.to_dict()},
            "arch": self.arch,
            "dtype": self.dtype,
        }


def _path(value: Any, root: Path, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{what} must be a path string, got {value!r}")
    p = Path(value).expanduser()
    p = p if p.is_absolute() else root / p
    if not p.exists():
        raise ConfigError(f"{what} {value!r} not found (looked at {p}): fix the path in the YAML")
    return str(p)


def parse_merge_yaml(path: str | Path) -> MergePlan:
    path = Path(path)
    data = read_yaml_file(path, what="merge config")
    return parse_merge_dict(data, root=path.parent, source=str(path))


def parse_merge_dict(data: Any, *, root: Path = Path("."), source: str = "merge config") -> MergePlan:
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a mapping with keys {list(TOP_KEYS)}")
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; valid keys: {list(TOP_KEYS)}")
    if "merge_method" not in data:
        raise ConfigError(f"{source}: missing merge_method; valid methods: {[m.name for m in list_merge_methods()]}")
    method = get_merge_method(str(data["merge_method"]))
    if method.needs and method.name != "opcm":
        raise ConfigError(
            f"{method.name} needs {', '.join(method.needs)} (data or an evaluation callback), which a YAML cannot "
            "give: call vitkit.merge(...) from Python, or pick a data-free method"
        )
    entries = data.get("models") or []
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{source}: models must be a non-empty list of {{model: path, parameters: {{...}}}}")
    models, weights = [], []
    for i, e in enumerate(entries):
        if isinstance(e, str):
            e = {"model": e}
        if not isinstance(e, dict) or "model" not in e or set(e) - {"model", "parameters"}:
            raise ConfigError(f"{source}: models[{i}] must be {{model: path, parameters: {{weight: w}}}}, got {e!r}")
        models.append(_path(e["model"], root, f"models[{i}]"))
        params = dict(e.get("parameters") or {})
        if set(params) - {"weight"}:
            raise ConfigError(f"{source}: models[{i}].parameters accepts only 'weight', got {sorted(params)}")
        weights.append(params.get("weight"))
    base = _path(data["base_model"], root, "base_model") if data.get("base_model") else None
    params = dict(data.get("parameters") or {})
    filt = dict(data.get("filter") or {})
    if set(filt) - {"targets", "skip"}:
        raise ConfigError(f"{source}: filter accepts 'targets' and 'skip' (tensor-name globs), got {sorted(filt)}")
    params.update({k: v for k, v in filt.items() if v is not None})
    if any(w is not None for w in weights):
        fields = method.config_cls.__dataclass_fields__
        if "weights" not in fields:
            raise ConfigError(f"{method.name} takes no per-model weight: remove models[].parameters.weight")
        params["weights"] = [1.0 if w is None else float(w) for w in weights]
    cfg = method.config_cls.from_dict(params)
    dtype = data.get("dtype")
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"{source}: dtype must be one of {list(DTYPES)}, got {dtype!r}")
    return MergePlan(method.name, cfg, models, base, data.get("arch"), dtype)
