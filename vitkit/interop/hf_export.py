"""``export_hf``: a vitkit model as a ``transformers`` folder (``config.json`` + ``model.safetensors`` + model card).

What can be exported is decided from the model's step history and modules (checked before anything is written):

* dense, merged, fine-tuned or distilled models: as they are; LoRA layers are folded into the weights (on a copy);
* pruned models: when every layer kept the same widths, ``num_attention_heads`` / ``head_dim`` /
  ``intermediate_size`` / ``num_hidden_layers`` say so; per-layer widths are refused (a transformers config holds
  one width for all layers);
* quantized models (fake-quant PTQ, integer modules), AdaptFormer adapters, visual prompts and early exits are
  refused: transformers cannot hold them;
* token reduction (ToMe, EViT, ...) changes no weight: the dense weights are written and the step is recorded in
  ``config.json`` under ``"vitkit_runtime"`` and in the card; transformers runs the model dense, ``vitkit.load(folder)``
  re-applies the step (:func:`reapply_runtime`, a load hook of :mod:`vitkit.models.hf.folder`);
* a bfloat16 model (``precision`` step) is written as its bf16 values in float32 (exact).

The config is the source folder's when the model came from ``transformers``, else the converter's complete one
(:mod:`vitkit.models.hf.registry`). Before the folder is swapped in, ``transformers`` (when installed) loads the
staged folder and must reproduce the model's outputs. The folder is staged beside the target and renamed into place;
only an earlier vitkit export (``"vitkit_export"`` in its ``config.json``) is ever replaced.

:func:`peft_hf_names` renames a peft LoRA export to the transformers model's module names (``export_peft(...,
naming="hf")``).
"""

from __future__ import annotations

import copy
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import yaml

from .._io import atomic_write_bytes, atomic_write_text, state_dict_for_saving, swap_in_dir
from ..errors import CheckpointError, ConfigError, UnsupportedModelError
from ..history import ORIGINAL_ATTR, set_step_history, step_history
from ..models.hf.folder import LOAD_HOOKS

_log = logging.getLogger(__name__)

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CARD = "README.md"
#: ``config.json`` key marking a vitkit export (and what it checked); a folder without it is never overwritten.
EXPORT_KEY = "vitkit_export"
#: ``config.json`` key listing the runtime steps (token reduction) that transformers does not run.
RUNTIME_KEY = "vitkit_runtime"
EXPORT_VERSION = 1
KEEP = "use --format onnx or keep the vitkit artifact"
#: transformers families whose attention reads ``config.head_dim`` (heads pruned with their width kept)
HEAD_DIM_TYPES = ("vit", "deit", "dinov2", "dinov2_with_registers")
#: outputs compared with the vitkit model's (and the CLS token of ``last_hidden_state``)
PARITY_OUTPUTS = ("logits", "image_embeds", "pooler_output")


@dataclass
class ExportPlan:
    """What the structure check decided: the transformations the copy needs and what the config must say."""

    fold_lora: bool = False
    bf16: bool = False
    remove_tokens: bool = False
    widths: dict[str, int] | None = None
    runtime: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def export_hf(
    model: nn.Module,
    out_dir: str | Path,
    *,
    report: Any = None,
    steps: list | None = None,
    check: bool = True,
) -> Path:
    """Write ``model`` as a ``transformers`` folder at ``out_dir`` and return it.

    ``report``: a vitkit report dict (or object with ``to_dict``) whose table goes into the card; ``steps``: the
    step records to describe (default: the model's history). ``check``: load the staged folder with transformers
    (when installed) and require the model's outputs within float rounding. ``model`` is never modified.
    """
    from safetensors.torch import save

    from .._version import __version__
    from ..models.hf.registry import converter_for_timm, supported_model_types
    from ..models.load import arch_record

    out_dir = Path(out_dir)
    check_target(out_dir)
    records = [_as_dict(s) for s in (step_history(model) if steps is None else steps)]
    plan = plan_export(model, records)
    arch = arch_record(model)
    name, kwargs, hf = arch["name"], dict(arch.get("kwargs") or {}), arch.get("hf") or {}
    conv = converter_for_timm(name, kwargs)
    if conv is None:
        raise UnsupportedModelError(
            f"no transformers converter takes timm {name!r} (supported model types: "
            f"{', '.join(supported_model_types())}): {KEEP}"
        )
    dense = dense_copy(model, plan, records)
    config, state = conv.to_hf(name, kwargs, state_dict_for_saving(dense), copy.deepcopy(hf.get("config")) or None)
    config = dict(config)
    if plan.widths is not None:
        set_widths(config, plan.widths)
    for key in (RUNTIME_KEY, EXPORT_KEY):
        config.pop(key, None)
    if plan.runtime:
        config[RUNTIME_KEY] = plan.runtime
    checks: dict[str, Any] = {"structure": "; ".join(plan.notes)}
    config[EXPORT_KEY] = {
        "version": EXPORT_VERSION,
        "vitkit": __version__,
        "timm": {"name": name, "kwargs": kwargs},
        "steps": [s["name"] for s in records],
        "checks": checks,
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.stage-", dir=out_dir.parent))
    try:
        atomic_write_bytes(stage / WEIGHTS, save(_unshared(state), metadata={"format": "pt"}))
        atomic_write_text(stage / CONFIG, _json(config))
        checks["parity"] = check_parity(dense, stage, config) if check else {"status": "skipped", "why": "check=False"}
        atomic_write_text(stage / CONFIG, _json(config))  # again: its export checks now hold the parity result
        card = model_card(config, records, plan, _report_dict(report), arch=arch, title=out_dir.name)
        atomic_write_text(stage / CARD, card)
        swap_in_dir(stage, out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _log.info("transformers folder written to %s", out_dir)
    return out_dir


# -- the structure check --------------------------------------------------------------------------------------------
def plan_export(model: nn.Module, records: list[dict[str, Any]]) -> ExportPlan:
    """Decide how ``model`` (with step ``records``) goes to transformers, or raise naming what cannot."""
    from ..adapt.common import KIND_NAMES, adapter_kinds
    from ..adapt.lora import lora_modules
    from ..adapters.runtime import reduced_dtype
    from ..early_exit.runtime import HEADS as EXIT_HEADS
    from ..quant.modules import quantizers
    from ..registry import get_transform, list_transforms
    from ..tokens.patch import TOKEN_TRANSFORMS, patched_method

    list_transforms()
    plan = ExportPlan()
    names = [s["name"] for s in records]
    quant_steps = [n for n in names if n in ("ptq", "mixed_ptq")]
    if quant_steps or quantizers(model) or any(_is_quant_module(m) for m in model.modules()):
        what = ", ".join(quant_steps) or "quantized modules"
        raise UnsupportedModelError(
            f"model is quantized ({what}) and a transformers folder holds float weights only: "
            "use --format onnx --quant qdq, or keep the vitkit artifact"
        )
    others = [k for k in adapter_kinds(model) if k != "lora"]
    if others:
        raise UnsupportedModelError(
            f"model has {', '.join(KIND_NAMES.get(k, k) for k in others)}, which transformers' model classes "
            f"cannot hold (they cannot be folded into the weights): {KEEP}"
        )
    if "early_exit" in names or EXIT_HEADS in model._modules:
        raise UnsupportedModelError(f"model has early-exit heads, which transformers' models cannot hold: {KEEP}")
    if lora_modules(model):
        plan.fold_lora = True
        plan.notes.append(f"LoRA folded into the weights ({len(lora_modules(model))} layers)")
    if reduced_dtype(model) is not None:
        if reduced_dtype(model) != torch.bfloat16:
            raise UnsupportedModelError(f"model runs in {reduced_dtype(model)}; only bf16 models export: {KEEP}")
        plan.bf16 = True
        plan.notes.append("bf16 weights written exactly as float32 (load with dtype=torch.bfloat16 to run in bf16)")
    for rec in records:
        spec = get_transform(rec["name"])
        if spec.kind != "runtime":
            continue
        if rec["name"] not in TOKEN_TRANSFORMS or spec.prepare is not None:
            raise UnsupportedModelError(f"runtime step {rec['name']!r} cannot go into a transformers folder: {KEEP}")
        plan.runtime.append({k: rec.get(k) for k in ("name", "kind", "version", "config", "decisions")})
    if plan.runtime or patched_method(model) is not None:
        plan.remove_tokens = True
        steps = ", ".join(r["name"] for r in plan.runtime) or patched_method(model)
        plan.notes.append(f"runtime step(s) {steps} recorded in config.json; the weights are the dense model's")
    if "prune" in names:
        plan.widths = uniform_widths(model)
        w = plan.widths
        plan.notes.append(
            f"pruned uniformly: {w['num_layers']} layers × {w['num_heads']} heads of {w['head_dim']}, "
            f"MLP {w['mlp_hidden']}"
        )
    if not plan.notes:
        plan.notes.append("dense model: exported as is")
    return plan


def _is_quant_module(m: nn.Module) -> bool:
    from ..quant.integer import IntegerViT
    from ..quant.modules import QuantSites, QuantWeightMixin

    return isinstance(m, QuantWeightMixin | QuantSites | IntegerViT)


def uniform_widths(model: nn.Module) -> dict[str, int]:
    """The one set of widths every block of a pruned model kept, or :class:`UnsupportedModelError` listing them."""
    from ..prune import structure

    blocks = list(structure(model).values())
    per_layer = {k: [b[k] for b in blocks] for k in ("num_heads", "head_dim", "mlp_hidden")}
    varying = {k: v for k, v in per_layer.items() if len(set(v)) > 1}
    if varying:
        desc = ", ".join(f"{k} {v}" for k, v in varying.items())
        raise UnsupportedModelError(
            f"transformers holds one width for all layers; this model has per-layer widths [{desc}]: "
            "use --format onnx or keep the vitkit artifact"
        )
    return {k: v[0] for k, v in per_layer.items()} | {"num_layers": len(blocks)}


def set_widths(config: dict[str, Any], widths: dict[str, int]) -> None:
    """Write uniformly pruned widths into a transformers config (flat ViT-style keys)."""
    mtype = config.get("model_type")
    if not all(isinstance(config.get(k), int) for k in ("hidden_size", "num_attention_heads")):
        raise UnsupportedModelError(f"pruned {mtype} models have no per-model width keys to write: {KEEP}")
    heads, head_dim = widths["num_heads"], widths["head_dim"]
    if heads * head_dim != config["hidden_size"] or "head_dim" in config:
        if mtype not in HEAD_DIM_TYPES:
            raise UnsupportedModelError(
                f"transformers' {mtype} ties the head width to hidden_size/num_attention_heads; this model kept "
                f"{heads} heads of {head_dim} (hidden {config['hidden_size']}): {KEEP}"
            )
        config["head_dim"] = head_dim
    config["num_attention_heads"] = heads
    for key, value in (("intermediate_size", widths["mlp_hidden"]), ("num_hidden_layers", widths["num_layers"])):
        if key in config:
            config[key] = value


# -- the dense copy -------------------------------------------------------------------------------------------------
def dense_copy(model: nn.Module, plan: ExportPlan, records: list[dict[str, Any]]) -> nn.Module:
    """A copy of ``model`` computing what the exported folder computes: token patches removed, LoRA folded,
    float32. ``model`` is not touched."""
    from ..adapters.runtime import DTYPE_ATTR
    from ..api import merge_back
    from ..report import StepRecord
    from ..tokens import remove

    dense = _base_copy(model)
    if plan.remove_tokens:
        remove(dense)
    if plan.bf16:
        dense.float()
        dense.__class__ = type(dense).__bases__[-1]  # the host class under the reduced-precision mixin
        dense.__dict__.pop(DTYPE_ATTR, None)
    if plan.fold_lora:
        # folding is a weights step: hide the later steps of this throwaway copy so the order check passes
        keep = [StepRecord(**s) for s in records if s["kind"] in ("structure", "weights")]
        set_step_history(dense, keep)
        merge_back(dense)
    return dense.eval()


# -- the parity check -----------------------------------------------------------------------------------------------
def check_parity(reference: nn.Module, folder: Path, config: dict[str, Any], images: int = 2) -> dict[str, Any]:
    """Load ``folder`` with transformers and compare its outputs with ``reference`` on random images."""
    try:
        import transformers
    except ImportError:
        return {"status": "skipped", "why": "transformers is not installed"}
    from ..adapters import adapter_for

    archs = config.get("architectures") or []
    cls = getattr(transformers, archs[0], None) if archs else None
    hf_logging = transformers.utils.logging
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar on the CLI's stderr
    try:
        hf_model = (cls or transformers.AutoModel).from_pretrained(str(folder), dtype=torch.float32).eval()
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    x = torch.randn(images, *adapter_for(reference).input_size(reference), generator=torch.Generator().manual_seed(0))
    device = next(reference.parameters()).device
    with torch.inference_mode():
        ref = reference(x.to(device)).float().cpu()
        out = hf_model(pixel_values=x)
    cands = {k: out[k] for k in PARITY_OUTPUTS if getattr(out, k, None) is not None}
    if getattr(out, "last_hidden_state", None) is not None:
        cands["last_hidden_state[:, 0]"] = out.last_hidden_state[:, 0]
    cands = {k: v.float() for k, v in cands.items() if v.shape == ref.shape}
    if "logits" in cands:  # a classifier must match on its logits
        cands = {"logits": cands["logits"]}
    if not cands:
        return {"status": "skipped", "why": f"no output of {type(hf_model).__name__} has shape {tuple(ref.shape)}"}
    diffs = {k: float((v - ref).abs().max()) for k, v in cands.items()}
    key = min(diffs, key=diffs.__getitem__)  # features: whichever output holds them (pooled, or the CLS token)
    diff = diffs[key]
    tol = 1e-4 * max(1.0, float(ref.abs().max()))
    if not diff <= tol:
        raise CheckpointError(
            f"the exported {type(hf_model).__name__} does not reproduce the model (max |{key} diff| {diff:.3g} > "
            f"{tol:.3g}): nothing was written; {KEEP} and report the converter bug"
        )
    return {"status": "passed", "output": key, "max_abs_diff": diff, "tolerance": tol, "images": images}


# -- the model card -------------------------------------------------------------------------------------------------
def model_card(
    config: dict[str, Any],
    records: list[dict[str, Any]],
    plan: ExportPlan,
    report: dict[str, Any] | None,
    *,
    arch: dict[str, Any],
    title: str,
) -> str:
    """README.md with YAML front matter (library, tags, base model) and the vitkit report table when known."""
    from ..report import markdown_report

    info = config[EXPORT_KEY]
    mtype = config.get("model_type", "")
    archs = config.get("architectures") or ["AutoModel"]
    meta: dict[str, Any] = {"library_name": "transformers", "tags": ["vitkit", *([mtype] if mtype else [])]}
    meta["tags"] += [n for n in dict.fromkeys(s["name"] for s in records) if n not in meta["tags"]]
    if archs[0].endswith("ForImageClassification") or archs[0].endswith("WithTeacher"):
        meta["pipeline_tag"] = "image-classification"
    hf = arch.get("hf") or {}
    base = base_model(arch)
    if base:
        meta["base_model"] = base
    origin = f"transformers `{mtype}` checkpoint" if hf else f"timm `{info['timm']['name']}`"
    auto = "AutoModelForImageClassification" if meta.get("pipeline_tag") else archs[0]
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {title}",
        "",
        f"Exported by vitkit {info['vitkit']} from a {origin}. Load it with",
        "",
        "```python",
        f"from transformers import {auto}",
        "",
        f'model = {auto}.from_pretrained("{title}")',
        "```",
        "",
        "## Steps applied",
        "",
    ]
    for s in records:
        lines.append(f"- **{s['name']}** ({s['kind']}): {s.get('decisions', {}).get('summary', '')}".rstrip(": "))
    if not records:
        lines.append("- none (the model as loaded)")
    lines += ["", "## Export checks", ""]
    lines += [f"- structure: {info['checks']['structure']}", f"- parity: {_parity_text(info['checks'].get('parity'))}"]
    if plan.runtime:
        names = ", ".join(f"`{r['name']}`" for r in plan.runtime)
        lines += [
            "",
            "## Runtime steps not in the weights",
            "",
            f"vitkit ran this model with {names} (token reduction), which changes no weight. transformers runs it "
            f"dense: its outputs are those of the model before {names}, and the accuracy and speed in the report "
            f'below are vitkit\'s. The step is recorded in `config.json` under `"{RUNTIME_KEY}"`, and '
            "`vitkit.load(folder)` re-applies it.",
        ]
    if report and report.get("variants"):
        md = markdown_report(report, title="Evaluation (vitkit report)", steps=None)
        lines += ["", *("#" + ln if ln.startswith("#") else ln for ln in md.splitlines())]
    return "\n".join(lines).rstrip() + "\n"


def base_model(arch: dict[str, Any]) -> str | None:
    """The Hub id the model came from (a transformers source folder's ``_name_or_path`` or a ``hf-hub:`` name),
    when that is a Hub id and not a local folder."""
    hf = arch.get("hf") or {}
    hub = str(arch.get("hub") or "").removeprefix("hf-hub:").split("@")[0]
    cands = [hf.get(k) for k in ("source", "name_or_path", "repo_id")]
    cands += [(hf.get("config") or {}).get("_name_or_path"), hub]
    for c in cands:
        if isinstance(c, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", c) and not Path(c).exists():
            return c
    return None


def _parity_text(p: dict[str, Any] | None) -> str:
    if not p:
        return "not checked"
    if p.get("status") != "passed":
        return f"not checked ({p.get('why', '')})"
    return (
        f"passed: transformers' `{p['output']}` equals the vitkit model's on {p['images']} random images "
        f"(max |diff| {p['max_abs_diff']:.2g})"
    )


# -- loading back ---------------------------------------------------------------------------------------------------
def reapply_runtime(model: nn.Module, config: dict[str, Any]) -> None:
    """Re-apply the runtime steps an export recorded under ``"vitkit_runtime"`` (a hook of ``vitkit.load``)."""
    steps = config.get(RUNTIME_KEY)
    if not steps:
        return
    from ..api import apply_
    from ..registry import get_transform, list_transforms

    list_transforms()
    cfgs = [get_transform(s["name"]).config_cls.from_dict(s["config"], version=s.get("version", 1)) for s in steps]
    apply_(model, cfgs)
    _log.info("re-applied runtime step(s) %s recorded in the folder", ", ".join(s["name"] for s in steps))


LOAD_HOOKS.append(reapply_runtime)


# -- peft adapters in transformers naming --------------------------------------------------------------------------
def peft_hf_names(
    model: nn.Module, tensors: dict[str, torch.Tensor], config: dict[str, Any], prefix: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Rename a peft LoRA export of ``model`` (timm module names) to the module names of the ``transformers`` model
    it converts to, so ``PeftModel.from_pretrained(<transformers model>, dir)`` loads it.

    Which transformers ``nn.Linear`` holds which rows of which timm layer is found by value on the exported base
    model (exact, whatever the family): a fused ``qkv`` LoRA ``(A, B)`` becomes three LoRAs on the query, key and
    value projections sharing ``A``, with ``B`` split by rows (``W_q + s·B_q A`` are the first rows of
    ``W_qkv + s·BA``)."""
    try:
        import transformers
    except ImportError:
        raise ConfigError("peft naming='hf' needs transformers: pip install 'vitkit[hf]'") from None
    from ..adapt.lora import fold_module, lora_modules
    from ..models.load import arch_record

    base = _base_copy(model)
    with torch.no_grad():  # the base weights W0 the adapter applies to: LoRA dropped, not folded
        for lin in lora_modules(base).values():
            if lin.lora_init == "pissa":
                lin.weight.add_(lin.lora_scale * lin.lora_B0 @ lin.lora_A0)
            lin.lora_B.zero_()
            fold_module(lin)
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_hf(base, Path(tmp) / "base", check=False)
        archs = json.loads((folder / CONFIG).read_text()).get("architectures") or []
        cls = getattr(transformers, archs[0], None) if archs else None
        hf_model = (cls or transformers.AutoModel).from_pretrained(str(folder), dtype=torch.float32)
    hf_linears = [(n, m.weight.detach()) for n, m in hf_model.named_modules() if isinstance(m, nn.Linear)]
    timm_modules = dict(base.named_modules())

    def parts(name: str) -> list[tuple[str, slice]]:
        """transformers Linears holding row blocks of timm layer ``name``, covering its rows exactly once."""
        w = timm_modules[name].weight.detach()
        found = []
        for hname, hw in hf_linears:
            if hw.shape[1] != w.shape[1] or w.shape[0] % hw.shape[0]:
                continue
            rows = [slice(k, k + hw.shape[0]) for k in range(0, w.shape[0], hw.shape[0])]
            found += [(hname, r) for r in rows if torch.equal(w[r], hw)]
        spans = sorted((r.start, r.stop) for _, r in found)
        tiled = [0, *(b for _, b in spans)] == [*(a for a, _ in spans), w.shape[0]]
        if not spans or not tiled:
            raise UnsupportedModelError(
                f"cannot tell which transformers layers hold timm layer {name!r} (matches: "
                f"{[n for n, _ in found]}): export with naming='timm'"
            )
        return sorted(found, key=lambda p: p[1].start)

    out: dict[str, torch.Tensor] = {}
    lora_targets, saved = {}, {}
    for key, t in tensors.items():
        inner = key[len(prefix) :]
        for which in (".lora_A.weight", ".lora_B.weight"):
            if inner.endswith(which):
                name = inner[: -len(which)]
                lora_targets.setdefault(name, parts(name))
                for hname, rows in lora_targets[name]:
                    out[f"{prefix}{hname}{which}"] = (t if "lora_A" in which else t[rows]).clone()
                break
        else:  # a modules_to_save parameter: the whole layer maps to one transformers module
            mname, pname = inner.rsplit(".", 1)
            if mname not in saved:
                mapped = parts(mname)
                if len(mapped) != 1:
                    raise UnsupportedModelError(f"timm module {mname!r} maps to {len(mapped)} transformers modules")
                saved[mname] = mapped[0][0]
            out[f"{prefix}{saved[mname]}.{pname}"] = t
    config = dict(config)
    config["target_modules"] = [h for ps in lora_targets.values() for h, _ in ps]
    config["modules_to_save"] = list(saved.values()) or None
    config["base_model_name_or_path"] = base_model(arch_record(model)) or config.get("base_model_name_or_path")
    return out, config


def _base_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` without the stashed unpruned model (shared through the memo, not copied)."""
    held = model.__dict__.get(ORIGINAL_ATTR)
    base = copy.deepcopy(model, {id(held): held} if held is not None else {})
    base.__dict__.pop(ORIGINAL_ATTR, None)
    return base


# -- files ----------------------------------------------------------------------------------------------------------
def is_hf_export(directory: str | Path) -> bool:
    """Is ``directory`` a folder written by :func:`export_hf` (its ``config.json`` has ``"vitkit_export"``)?"""
    path = Path(directory) / CONFIG
    try:
        return EXPORT_KEY in json.loads(path.read_text())
    except (OSError, ValueError, TypeError):
        return False


def check_target(out_dir: Path) -> None:
    """Refuse a target that exists and is not empty nor an earlier vitkit export (nothing is overwritten)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir() or (any(out_dir.iterdir()) and not is_hf_export(out_dir)):
        raise ConfigError(f"output {out_dir} exists and is not a vitkit transformers export: choose another path")


def _as_dict(step: Any) -> dict[str, Any]:
    return dict(step) if isinstance(step, dict) else step.to_dict()


def _report_dict(report: Any) -> dict[str, Any] | None:
    if report is None or isinstance(report, dict):
        return report
    if hasattr(report, "to_dict"):
        return report.to_dict()
    raise ConfigError(f"report must be a report dict or have to_dict(), got {type(report).__name__}")


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, cloned where two share storage (safetensors refuses aliasing)."""
    out, seen = {}, set()
    for k, v in state.items():
        t = v.detach().cpu().contiguous()
        if t.untyped_storage().data_ptr() in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[k] = t
    return out


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str) + "\n"
