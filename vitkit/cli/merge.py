"""``vitkit merge merge.yaml -o out/``: merge checkpoints described by a mergekit-like YAML.

Writes ``out/model.safetensors`` + ``out/merge.resolved.yaml`` (every default expanded), each atomically; with
``arch:`` in the YAML (or an artifact dir as base / first model) it writes a full loadable vitkit artifact.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from ..errors import ConfigError
from ..ui import parse_arch
from ._shared import add_arch

_log = logging.getLogger(__name__)

RESOLVED = "merge.resolved.yaml"


def add_commands(sub) -> None:
    s = sub.add_parser("merge", help="merge fine-tuned checkpoints (average, task arithmetic, TIES, DARE, OPCM)")
    s.add_argument("config", help="merge YAML: merge_method, base_model, models[], parameters, filter, arch")
    s.add_argument("-o", "--out", required=True, help="output directory")
    s.add_argument("--dry-run", action="store_true", help="validate the YAML and print the resolved plan")
    add_arch(s, "overrides the YAML's arch:")
    s.set_defaults(func=cmd_merge)


def cmd_merge(args) -> int:
    import torch

    from .._io import atomic_write_bytes, atomic_write_text
    from ..artifact import is_artifact
    from ..merging.core import merge
    from ..merging.yaml_config import parse_merge_yaml
    from ..ui import console, progress

    plan = parse_merge_yaml(args.config)
    con = console()
    resolved = yaml.safe_dump(plan.resolved(), sort_keys=False)
    if args.dry_run:
        con.print(resolved)
        return 0
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not _is_merge_output(out, is_artifact))):
        raise ConfigError(f"output {out} exists and is not a merge output: choose another output path")
    with progress() as prog:
        task = prog.add_task(f"merging ({plan.method})", total=None, info="")

        def on_progress(done: int, total: int, what: str) -> None:
            prog.update(task, total=total, completed=done, info=what[-40:])

        state = merge(plan.models, plan.cfg, base=plan.base, progress=on_progress)
    if plan.dtype:
        dt = getattr(torch, plan.dtype)
        state = {k: v.to(dt) if v.is_floating_point() else v for k, v in state.items()}
    arch_model = _arch_model(plan, parse_arch(args.arch))
    if arch_model is not None:
        from ..artifact import save_artifact
        from ..models.load import load_state_dict_strict

        load_state_dict_strict(arch_model, state, source="merged weights")
        save_artifact(arch_model, {"merge": plan.resolved()}, None, out, title=f"vitkit merge: {plan.method}")
        atomic_write_text(out / RESOLVED, resolved)
    else:
        from safetensors.torch import save

        out.mkdir(parents=True, exist_ok=True)
        contiguous = {k: v.contiguous() for k, v in state.items()}
        atomic_write_bytes(out / "model.safetensors", save(contiguous, metadata={"format": "pt"}))
        atomic_write_text(out / RESOLVED, resolved)
    con.print(f"merged {len(plan.models)} models with {plan.method} → {out}")
    return 0


def _is_merge_output(out: Path, is_artifact) -> bool:
    return is_artifact(out) or (out / RESOLVED).exists()


def _arch_model(plan, override=None):
    from ..models import load

    arch = override if override is not None else plan.arch
    if arch is not None:
        if isinstance(arch, str):
            return load(arch)
        if isinstance(arch, dict) and "name" in arch:
            return load(arch["name"], **dict(arch.get("kwargs") or {}))
        raise ConfigError(f"arch must be a model name or {{name, kwargs}}, got {arch!r}")
    from ..artifact import is_artifact

    for p in [plan.base] + plan.models:
        if p and Path(p).is_dir() and is_artifact(p):
            from ..models.load import arch_record, build_arch

            rec = arch_record(load(p))
            return build_arch(rec["name"], rec["kwargs"])
    return None
