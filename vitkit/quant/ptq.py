"""Post-training quantization of ViTs: the ``ptq`` transform (:class:`PTQConfig`, :func:`apply_ptq`).

``method`` picks a calibrator, one file each in :mod:`vitkit.quant.calibrators`: ``repq`` — RepQ-ViT (Li et al.,
ICCV 2023; default), ``dopq`` — RepQ-ViT with DopQ-ViT's median post-LN scale, ``ptq4vit`` — PTQ4ViT's twin
uniform quantizers (Yuan et al., ECCV 2022), ``minmax`` / ``percentile`` — the naive baselines. The calibrator
plans the quantizers (its post-softmax / post-GELU quantizers and scale searches) and runs the calibration passes;
this module selects the quantization sites through the host adapter (the patch projection, every block linear,
each attention core, the classifier heads), installs the quantizers, checks the calibration data and records the
decisions an artifact reload needs.

Calibration ends with every quantizer fitted; nothing is searched at evaluation time. From then on the
quantized layers fake-quantize their weights once and reuse them, and the activation quantizers use the fast
paths of :mod:`vitkit.ops.quant` (see :mod:`vitkit.quant.modules`), with outputs equal to per-forward
recomputation (``reference_quant()``, tested with ``torch.equal``).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ..adapters import adapter_for
from ..configs import TransformConfig, select_names
from ..errors import ConfigError, DataError, UnsupportedModelError
from ..registry import register_transform
from ..validate import check_choice, check_int, check_number
from .calibrators import METHODS, POST_GELU_QUANTIZERS, SOFTMAX_QUANTIZERS, calibrator_for
from .modules import is_quant_attention, patch_module, quant_class, quantized_size_bytes, quantizers
from .quantizer import make_quantizer
from .reconstruct import reconstruct_blocks_

_log = logging.getLogger(__name__)


def _check_bits(value: Any, name: str) -> None:
    check_int(value, f"PTQConfig.{name}", low=2, high=8)


@dataclass(frozen=True)
class PTQConfig(TransformConfig):
    """Post-training quantization (fake-quant simulation of integer inference).

    ``w_bits`` / ``a_bits``: weight / activation bits (2–8; attention inputs use ``a_bits``);
    ``method``: ``repq`` (RepQ-ViT), ``dopq`` (RepQ-ViT + DopQ-ViT median scale), ``ptq4vit``, ``minmax``,
    ``percentile``; ``calib_images``: images used for calibration (RepQ-ViT/PTQ4ViT: 32); ``percentile``:
    clip percentile for ``method="percentile"``; ``first_input_bits``: patch-embedding input bits (8 in the
    papers); ``first_weight_bits``: weight bits of that first layer (None = ``w_bits`` for a patchify projection,
    whose kernel equals its stride, as RepQ-ViT quantizes it, and 8 for a convolution stem — TinyViT's,
    EfficientFormer's — as CNN post-training quantization keeps the first layer at 8 bits, e.g. BRECQ, Li et al.,
    ICLR 2021: a 3×3×3 kernel has 27 weights per channel, and at 4 bits the small EfficientFormer of BENCHMARKS.md
    "families" falls to chance); ``quantize_head``: quantize the classifier; ``layer_bits``: per-module
    ``{name: w_bits}`` overrides (what :class:`MixedPrecisionConfig` produces); ``softmax``: post-softmax quantizer
    ``log_sqrt2`` | ``log2`` | ``twin`` | ``uniform`` (None = the method's own: log√2 for RepQ/DopQ, twin for
    PTQ4ViT, uniform for the baselines); ``post_gelu``: quantizer of the post-GELU ``fc2`` inputs, ``uniform`` |
    ``twin`` (None = the method's own: twin-uniform for PTQ4ViT, the method's uniform search otherwise;
    ``method="repq", post_gelu="twin"`` is a measured deviation from RepQ-ViT for models with long GELU tails,
    see BENCHMARKS.md "real"); ``outlier_ratio``: keep the input channels of block linears whose calibrated
    max exceeds this multiple of the median channel's in float (the fake-quant twin of ``deploy_int8``'s
    LLM.int8()-style split; uniform input quantizers only, so with ``post_gelu="twin"`` it leaves fc2 to the
    twin quantizer; None = off, the papers' setting); ``seed``: calibration draw from a dataset;
    ``reconstruct_iters``: APHQ-ViT-style block reconstruction steps per block after calibration (0 = off,
    :mod:`vitkit.quant.reconstruct`), ``reconstruct_lr`` its relative step size.
    ``targets``/``skip`` globs match the quantizable module names (:func:`quantizable_names`: the patch
    projection, each block's linears and attention core, the heads, as ``model.named_modules()`` names them).
    """

    w_bits: int = 8
    a_bits: int = 8
    method: str = "repq"
    calib_images: int = 32
    percentile: float = 99.99
    first_input_bits: int = 8
    first_weight_bits: int | None = None
    quantize_head: bool = True
    layer_bits: dict | None = None
    softmax: str | None = None
    post_gelu: str | None = None
    outlier_ratio: float | None = None
    seed: int = 0
    reconstruct_iters: int = 0
    reconstruct_lr: float = 1e-3
    #: 2: ``first_weight_bits`` (version 1 quantized every first layer at ``w_bits``)
    version: ClassVar[int] = 2

    @classmethod
    def migrate(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """A version-1 config quantized a convolution stem at ``w_bits``: it keeps doing so on reload."""
        data = dict(data)
        if version < 2 and "first_weight_bits" not in data:
            data["first_weight_bits"] = int(data.get("w_bits", 8))
        return data

    def validate(self) -> None:
        _check_bits(self.w_bits, "w_bits")
        _check_bits(self.a_bits, "a_bits")
        _check_bits(self.first_input_bits, "first_input_bits")
        if self.first_weight_bits is not None:
            _check_bits(self.first_weight_bits, "first_weight_bits")
        check_choice(self.method, "PTQConfig.method", METHODS)
        check_int(self.calib_images, "PTQConfig.calib_images", low=1)
        check_number(self.percentile, "PTQConfig.percentile", low=50.0, high=100.0, low_open=True)
        if self.softmax is not None:
            check_choice(self.softmax, "PTQConfig.softmax", SOFTMAX_QUANTIZERS, why=" or null")
        if self.post_gelu is not None:
            check_choice(self.post_gelu, "PTQConfig.post_gelu", POST_GELU_QUANTIZERS, why=" or null")
        check_number(self.outlier_ratio, "PTQConfig.outlier_ratio", low=1.0, low_open=True, optional=True)
        for name, bits in dict(self.layer_bits or {}).items():
            _check_bits(bits, f"layer_bits[{name!r}]")
        check_int(self.reconstruct_iters, "PTQConfig.reconstruct_iters", low=0, high=100000, why=" (0 = off)")
        check_number(self.reconstruct_lr, "PTQConfig.reconstruct_lr", low=0.0, high=1.0, low_open=True, high_open=True)


# -- planning -----------------------------------------------------------------------------------------------
def quant_sites(model: nn.Module) -> dict[str, str]:
    """``{module name: role}`` of the modules PTQ patches, in forward order: the patch projection (``embed``), per
    block ``qkv``, its attention core (``attention``), ``attn_out``, ``mlp_in``, ``mlp_out``, then the heads."""
    host = adapter_for(model)
    info = host.describe(model)
    unsupported = sorted(info.features & {"gated_attn"})
    if unsupported:
        raise UnsupportedModelError(
            f"ptq does not handle the model feature(s) {unsupported}: use a ViT with plain Attention and Mlp"
        )
    cores = {core.block: core.name for core in host.attention_cores(model)}
    sites = {host.outer_layers(model).patch_proj_name: "embed"}
    for name, linear in host.linear_roles(model).items():
        sites[name] = linear.role
        if linear.role in ("qkv", "pool_kv"):
            sites[cores[linear.block]] = "attention"  # q·kᵀ and attn·v run between qkv and attn_out
    return sites


def quantizable_names(model: nn.Module) -> list[str]:
    """Names of the modules PTQ patches, in forward order."""
    return list(quant_sites(model))


def build_plan(model: nn.Module, cfg: PTQConfig) -> dict[str, dict[str, dict]]:
    """``{module name: {quantizer slot: quantizer spec}}`` before calibration (the calibrator's plan)."""
    sites = quant_sites(model)
    names = select_names(list(sites), cfg.targets, cfg.skip, what="quantizable modules")
    if not cfg.quantize_head:
        names = [n for n in names if sites[n] != "head"]
    unknown = sorted(set(cfg.layer_bits or {}) - set(names))
    if unknown:
        raise ConfigError(f"PTQConfig.layer_bits names unknown module(s) {unknown}; quantizable: {names[:4]}, ...")
    modules = dict(model.named_modules())
    # the adapter has already refused attention subclasses with their own forward (check_host_module); what is left
    # unquantizable are Linear subclasses (LoRALinear, adapter-wrapped layers) whose extra branch patching would drop
    bad = [f"{n} ({type(modules[n]).__name__})" for n in names if quant_class(type(modules[n])) is None]
    if bad:
        lora = any(isinstance(modules[n], nn.Linear) for n in names if quant_class(type(modules[n])) is None)
        why = (
            "a Linear subclass with an extra branch (LoRA / adapter) would lose it: fold LoRA first with a lora_merge "
            "step / vitkit.merge_back, or skip them with skip=[...]"
            if lora
            else "vitkit has no fake-quant version of that class: skip them with skip=[...]"
        )
        raise UnsupportedModelError(f"ptq cannot quantize the layer(s) {bad[:4]}: {why}")
    return calibrator_for(cfg.method).plan(model, {n: sites[n] for n in names}, cfg)


def install(model: nn.Module, plan: dict[str, dict[str, dict]], *, calibrated: bool) -> None:
    """Patch every planned module with fresh quantizers (``calibrated=True`` when values come from a state dict)."""
    modules = dict(model.named_modules())
    route = getattr(adapter_for(model), "route_linears", None)
    if callable(route):  # the host's forward must call the quantized modules (some hosts read a weight directly)
        route(model, list(plan))
    for name, slots in plan.items():
        qs = {slot: make_quantizer(spec, where=f"{name}.{slot}") for slot, spec in slots.items()}
        for q in qs.values():
            q.calibrated = calibrated
        patch_module(modules[name], qs)


# -- calibration data ------------------------------------------------------------------------------------------
def calibration_tensor(calib: Any, model: nn.Module, n: int, seed: int = 0) -> torch.Tensor:
    """``[n, C, H, W]`` calibration images from a tensor, a dataset or an iterable of batches, checked."""
    if calib is None:
        raise DataError(
            "ptq needs calibration images: pass calib=vitkit.data.calibration_set(dataset, 32) (recipes do this)"
        )
    if isinstance(calib, Dataset) and not isinstance(calib, torch.Tensor):
        from ..data import calibration_set

        if len(calib) < n:
            raise DataError(f"calibration dataset has {len(calib)} images but calib_images={n}: lower calib_images")
        x = calibration_set(calib, n, seed=seed)
    elif isinstance(calib, torch.Tensor):
        x = calib
    elif isinstance(calib, list | tuple) or hasattr(calib, "__iter__"):
        parts, have = [], 0
        for batch in calib:
            t = batch[0] if isinstance(batch, list | tuple) else batch
            parts.append(torch.as_tensor(t))
            have += parts[-1].shape[0] if parts[-1].dim() == 4 else 1
            if have >= n:
                break
        if not parts:
            raise DataError("calibration set is empty: pass at least calib_images images")
        x = torch.cat([p if p.dim() == 4 else p.unsqueeze(0) for p in parts])
    else:
        raise DataError(f"calib must be an image tensor [n,C,H,W] or a dataset, got {type(calib).__name__}")
    want = adapter_for(model).input_size(model)
    if x.dim() != 4 or tuple(x.shape[1:]) != want:
        raise DataError(
            f"calibration images have shape {tuple(x.shape[1:]) if x.dim() == 4 else tuple(x.shape)} but the model "
            f"expects [n, {want[0]}, {want[1]}, {want[2]}]: load the data with model=..."
        )
    if x.shape[0] == 0:
        raise DataError("calibration set is empty: pass at least calib_images images")
    if x.shape[0] < n:
        raise DataError(
            f"calibration set has {x.shape[0]} images but calib_images={n}: pass more images or lower calib_images"
        )
    x = x[:n].float()
    if not torch.isfinite(x).all():
        raise DataError("calibration images contain NaN/Inf values: clean the calibration set")
    return x


def record_float_channels(model: nn.Module, plan: dict) -> dict[str, list[int]]:
    """Write the outlier channels each input quantizer found into ``plan`` (so that a reload rebuilds them)."""
    modules, found = dict(model.named_modules()), {}
    for name, slots in plan.items():
        q = getattr(modules[name], "a_quant", None)
        if "a_quant" in slots and getattr(q, "float_channels", None):
            slots["a_quant"]["float_channels"] = list(q.float_channels)
            found[name] = list(q.float_channels)
    if found:
        _log.info("input channels kept in float: %s", found)
    return found


# -- the transform ----------------------------------------------------------------------------------------------------
def check_not_quantized(model: nn.Module) -> None:
    if quantizers(model) or any(is_quant_attention(m) for m in model.modules()):
        raise ConfigError("model is already quantized: apply ptq to a float model (load the original again)")


def _restore(model: nn.Module, cfg: PTQConfig, decisions: dict) -> None:
    """Rebuild the quantized module structure on a fresh float model, before the strict state-dict load."""
    modules = dict(model.named_modules())
    for name in decisions.get("added_bias", []):
        lin = modules[name]
        lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype))
    install(model, decisions["plan"], calibrated=True)


@register_transform(
    PTQConfig,
    name="ptq",
    kind="numerics",
    paper="RepQ-ViT (Li et al., ICCV 2023)",
    restore=_restore,
    example={"w_bits": 8, "a_bits": 8, "calib_images": 4},  # quantization has no zero-strength setting
)
def apply_ptq(model: nn.Module, cfg: PTQConfig, *, calib=None, dry_run: bool = False) -> dict[str, Any]:
    """Quantize ``model`` in place (fake-quant) with ``cfg``; ``calib``: ``[n,C,H,W]`` images or a dataset."""
    check_not_quantized(model)
    plan = build_plan(model, cfg)  # the adapter refuses unsupported models and blocks, naming the feature
    n_bits = {n: s["w_quant"]["bits"] for n, s in plan.items() if "w_quant" in s}
    head = f"W{cfg.w_bits}A{cfg.a_bits} {cfg.method}"
    first = next((n for n, role in quant_sites(model).items() if role == "embed" and n in n_bits), None)
    if first is not None and n_bits[first] != cfg.w_bits and first not in (cfg.layer_bits or {}):
        head += f" (first layer {first} at W{n_bits[first]})"
    if dry_run:
        return {"summary": f"{head}: would quantize {len(plan)} modules", "plan": plan, "weight_bits": n_bits}
    x = calibration_tensor(calib, model, cfg.calib_images, cfg.seed)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    fp_model = copy.deepcopy(model) if cfg.reconstruct_iters else None  # reconstruction target
    install(model, plan, calibrated=False)
    calibrated = calibrator_for(cfg.method).calibrate(model, x, plan)
    reparam, added = calibrated.reparameterized, calibrated.added_bias
    recon = []
    if fp_model is not None:
        recon = reconstruct_blocks_(model, fp_model, x, iters=cfg.reconstruct_iters, lr=cfg.reconstruct_lr)
    seconds = time.perf_counter() - t0
    model.train(was_training)
    for name, q in quantizers(model).items():
        if not q.calibrated:  # e.g. a module the calibration forward never reached
            raise DataError(f"quantizer {name} saw no data during calibration: is the module used in forward?")
    float_channels = record_float_channels(model, plan)
    size = quantized_size_bytes(model)
    _log.info("%s calibrated on %d images in %.1fs", head, x.shape[0], seconds)
    return {
        "summary": f"{head}: {len(plan)} modules, {len(reparam)} LN reparameterizations, {x.shape[0]} calib images",
        "plan": plan,
        "reparameterized": reparam,
        "added_bias": added,
        "calib_images": int(x.shape[0]),
        "calib_seconds": round(seconds, 3),
        "weight_bits": n_bits,
        "packed_bytes": int(size),
        **({"reconstruction": recon} if recon else {}),
        **({"float_channels": float_channels} if float_channels else {}),
    }
