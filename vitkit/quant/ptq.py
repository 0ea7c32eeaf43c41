"""Post-training quantization of timm ViTs: RepQ-ViT (default), PTQ4ViT-style twin uniform, min-max, percentile.

RepQ-ViT (Li et al., ICCV 2023), as published (§4, Algorithm 1 and public code):

1. every Linear/Conv2d (patch embedding and head included) gets a per-output-channel weight quantizer and an
   input quantizer; both inputs of ``q·kᵀ`` and ``attn·v`` are quantized, the post-softmax map with the log√2
   quantizer (eq. 11–12); the patch-embedding input stays 8 bit;
2. the post-LayerNorm inputs of ``qkv`` and ``fc1`` are calibrated **per channel**; scales come from RepQ's
   quantile search (clip quantiles {0.999, 0.9999, 0.99999}, lowest L2 error); one forward over the
   calibration images with quantization on calibrates every quantizer in order;
3. scale reparameterization (eq. 6–9, :mod:`vitkit.quant.reparam`) folds the per-channel scales into the
   LayerNorm affine and the next linear — the input quantizer becomes per-tensor — and marks those weight
   quantizers uncalibrated;
4. a second calibration pass over the same images re-fits them.

``method="dopq"``: RepQ-ViT with DopQ-ViT's median post-LN scale (MOSF, v1). DopQ-ViT's TanQ softmax
quantizer is *not* implemented (its formula is not in the sources available here). ``method="ptq4vit"``:
twin-uniform quantizers for post-softmax and post-GELU values with an MSE search over clipping candidates
(PTQ4ViT, Yuan et al., ECCV 2022); deliberately without its Hessian-guided metric, whose gradient is
numerically zero in parallel calibration (hahnyuan/PTQ4ViT#23), and calibrated sequentially.
``method="minmax"`` / ``"percentile"``: the naive per-tensor baselines (uniform attention map).

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
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ..adapters.timm_vit import block_parts, describe, input_size
from ..configs import TransformConfig, select_names
from ..errors import ConfigError, DataError, UnsupportedModelError
from ..registry import register_transform
from .modules import (
    PATCHED,
    UNPATCHED,
    QuantAttention,
    make_quantizer,
    patch_module,
    quantized_size_bytes,
    quantizers,
)
from .reconstruct import reconstruct_blocks_
from .reparam import fold_into_norm_linear, reparam_factors

_log = logging.getLogger(__name__)

METHODS = ("repq", "dopq", "ptq4vit", "minmax", "percentile")
SOFTMAX_QUANTIZERS = ("log_sqrt2", "log2", "twin", "uniform")
POST_GELU_QUANTIZERS = ("uniform", "twin")
_DEFAULT_SOFTMAX = {
    "repq": "log_sqrt2",
    "dopq": "log_sqrt2",
    "ptq4vit": "twin",
    "minmax": "uniform",
    "percentile": "uniform",
}
#: fc2-input (post-GELU) quantizer per method: PTQ4ViT's twin uniform, else the method's uniform search
_DEFAULT_POST_GELU = {m: "twin" if m == "ptq4vit" else "uniform" for m in METHODS}
#: Activation / weight scale search per method (see :func:`vitkit.ops.quant.search_uniform`).
_ACT_SEARCH = {"repq": "quantile", "dopq": "quantile", "ptq4vit": "mse", "minmax": "minmax", "percentile": "percentile"}
_W_SEARCH = {"repq": "quantile", "dopq": "quantile", "ptq4vit": "mse", "minmax": "minmax", "percentile": "minmax"}


def _check_bits(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 8:
        raise ConfigError(f"PTQConfig.{name} must be an int from 2 to 8, got {value!r}")


@dataclass(frozen=True)
class PTQConfig(TransformConfig):
    """Post-training quantization (fake-quant simulation of integer inference).

    ``w_bits`` / ``a_bits``: weight / activation bits (2–8; attention inputs use ``a_bits``);
    ``method``: ``repq`` (RepQ-ViT), ``dopq`` (RepQ-ViT + DopQ-ViT median scale), ``ptq4vit``, ``minmax``,
    ``percentile``; ``calib_images``: images used for calibration (RepQ-ViT/PTQ4ViT: 32); ``percentile``:
    clip percentile for ``method="percentile"``; ``first_input_bits``: patch-embedding input bits (8 in the
    papers); ``quantize_head``: quantize the classifier; ``layer_bits``: per-module ``{name: w_bits}``
    overrides (what :class:`MixedPrecisionConfig` produces); ``softmax``: post-softmax quantizer
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
    ``targets``/``skip`` globs match the quantizable module names (``blocks.0.attn.qkv``, ``head`` ...).
    """

    w_bits: int = 8
    a_bits: int = 8
    method: str = "repq"
    calib_images: int = 32
    percentile: float = 99.99
    first_input_bits: int = 8
    quantize_head: bool = True
    layer_bits: dict | None = None
    softmax: str | None = None
    post_gelu: str | None = None
    outlier_ratio: float | None = None
    seed: int = 0
    reconstruct_iters: int = 0
    reconstruct_lr: float = 1e-3

    def validate(self) -> None:
        _check_bits(self.w_bits, "w_bits")
        _check_bits(self.a_bits, "a_bits")
        _check_bits(self.first_input_bits, "first_input_bits")
        if self.method not in METHODS:
            raise ConfigError(f"PTQConfig.method must be one of {list(METHODS)}, got {self.method!r}")
        if isinstance(self.calib_images, bool) or not isinstance(self.calib_images, int) or self.calib_images < 1:
            raise ConfigError(f"PTQConfig.calib_images must be a positive int, got {self.calib_images!r}")
        if not 50.0 < float(self.percentile) <= 100.0:
            raise ConfigError(f"PTQConfig.percentile must be in (50, 100], got {self.percentile}")
        if self.softmax is not None and self.softmax not in SOFTMAX_QUANTIZERS:
            raise ConfigError(
                f"PTQConfig.softmax must be one of {list(SOFTMAX_QUANTIZERS)} or null, got {self.softmax!r}"
            )
        if self.post_gelu is not None and self.post_gelu not in POST_GELU_QUANTIZERS:
            raise ConfigError(
                f"PTQConfig.post_gelu must be one of {list(POST_GELU_QUANTIZERS)} or null, got {self.post_gelu!r}"
            )
        r = self.outlier_ratio
        if r is not None and (isinstance(r, bool) or not isinstance(r, int | float) or not r > 1.0):
            raise ConfigError(f"PTQConfig.outlier_ratio must be a number > 1 or null, got {r!r}")
        for name, bits in dict(self.layer_bits or {}).items():
            _check_bits(bits, f"layer_bits[{name!r}]")
        it = self.reconstruct_iters
        if isinstance(it, bool) or not isinstance(it, int) or not 0 <= it <= 100000:
            raise ConfigError(f"PTQConfig.reconstruct_iters must be an int >= 0 (0 = off), got {it!r}")
        if not 0.0 < float(self.reconstruct_lr) < 1.0:
            raise ConfigError(f"PTQConfig.reconstruct_lr must be in (0, 1), got {self.reconstruct_lr}")


# -- planning -----------------------------------------------------------------------------------------------
def quantizable_names(model: nn.Module) -> list[str]:
    """Names of the modules PTQ patches, in forward order."""
    info = describe(model)
    unsupported = sorted(info.features & {"gated_attn", "glu_mlp"})
    if unsupported:
        raise UnsupportedModelError(
            f"ptq does not handle the model feature(s) {unsupported}: use a ViT with plain Attention and Mlp"
        )
    names = ["patch_embed.proj"]
    for i in range(info.depth):
        names += [f"blocks.{i}.attn.qkv", f"blocks.{i}.attn", f"blocks.{i}.attn.proj"]
        names += [f"blocks.{i}.mlp.fc1", f"blocks.{i}.mlp.fc2"]
    modules = dict(model.named_modules())
    for head_name in ("head", "head_dist"):
        if isinstance(modules.get(head_name), nn.Linear):
            names.append(head_name)
    return names


def build_plan(model: nn.Module, cfg: PTQConfig) -> dict[str, dict[str, dict]]:
    """``{module name: {quantizer slot: quantizer spec}}`` before calibration."""
    names = select_names(quantizable_names(model), cfg.targets, cfg.skip, what="quantizable modules")
    if not cfg.quantize_head:
        names = [n for n in names if n not in ("head", "head_dist")]
    overrides = dict(cfg.layer_bits or {})
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ConfigError(f"PTQConfig.layer_bits names unknown module(s) {unknown}; quantizable: {names[:4]}, ...")
    modules = dict(model.named_modules())
    a_search, w_search = _ACT_SEARCH[cfg.method], _W_SEARCH[cfg.method]
    repq = cfg.method in ("repq", "dopq")

    def uni(bits: int, search: str, channels: int | None = None, axis: int = -1) -> dict:
        return {
            "kind": "uniform",
            "bits": bits,
            "symmetric": False,
            "channels": channels,
            "axis": axis,
            "search": search,
            "percentile": float(cfg.percentile),
        }

    plan: dict[str, dict[str, dict]] = {}
    # exact classes: subclasses (LoRALinear, adapter-wrapped layers) would lose their extra branch when patched
    bad = [
        f"{n} ({type(modules[n]).__name__})"
        for n in names
        if UNPATCHED.get(type(modules[n]), type(modules[n])) not in PATCHED
    ]
    if bad:
        raise UnsupportedModelError(
            f"ptq cannot quantize the layer(s) {bad[:4]}: expected nn.Linear / nn.Conv2d / timm Attention there "
            "(fold LoRA first with a lora_merge step / vitkit.adapt.merge_back, or skip them with skip=[...])"
        )
    for name in names:
        mod = modules[name]
        if name.endswith(".attn"):
            sm = cfg.softmax or _DEFAULT_SOFTMAX[cfg.method]
            if sm in ("log_sqrt2", "log2"):
                attn_q = {"kind": "log", "bits": cfg.a_bits, "sqrt2": sm == "log_sqrt2"}
            elif sm == "twin":
                attn_q = {"kind": "twin", "bits": cfg.a_bits, "mode": "softmax"}
            else:
                attn_q = uni(cfg.a_bits, a_search)
            plan[name] = {
                "q_quant": uni(cfg.a_bits, a_search),
                "k_quant": uni(cfg.a_bits, a_search),
                "attn_quant": attn_q,
                "v_quant": uni(cfg.a_bits, a_search),
            }
            continue
        wb = int(overrides.get(name, cfg.w_bits))
        w_spec = uni(wb, w_search, channels=mod.weight.shape[0], axis=0)
        if name == "patch_embed.proj":
            a_spec = uni(cfg.first_input_bits, a_search)
        elif repq and (name.endswith(".attn.qkv") or name.endswith(".mlp.fc1")):
            a_spec = uni(cfg.a_bits, a_search, channels=mod.in_features, axis=-1)  # post-LN: per channel first
        elif name.endswith(".mlp.fc2") and (cfg.post_gelu or _DEFAULT_POST_GELU[cfg.method]) == "twin":
            a_spec = {"kind": "twin", "bits": cfg.a_bits, "mode": "gelu"}
        else:
            a_spec = uni(cfg.a_bits, a_search)
        if cfg.outlier_ratio is not None and name.startswith("blocks.") and a_spec["kind"] == "uniform":
            a_spec["outlier_ratio"] = float(cfg.outlier_ratio)
        plan[name] = {"a_quant": a_spec, "w_quant": w_spec}
    return plan


def install(model: nn.Module, plan: dict[str, dict[str, dict]], *, calibrated: bool) -> None:
    """Patch every planned module with fresh quantizers (``calibrated=True`` when values come from a state dict)."""
    modules = dict(model.named_modules())
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
    want = input_size(model)
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


# -- RepQ-ViT -----------------------------------------------------------------------------------------------------
def post_ln_pairs(model: nn.Module, plan: dict) -> list[tuple[str, str]]:
    """``(norm name, linear name)`` for the per-channel post-LN quantizers in ``plan`` (qkv ← norm1, fc1 ← norm2)."""
    pairs = []
    for i, _ in enumerate(model.blocks):
        for norm, lin in ((f"blocks.{i}.norm1", f"blocks.{i}.attn.qkv"), (f"blocks.{i}.norm2", f"blocks.{i}.mlp.fc1")):
            spec = plan.get(lin, {}).get("a_quant")
            if spec and spec.get("kind") == "uniform" and spec.get("channels"):
                pairs.append((norm, lin))
    return pairs


@torch.no_grad()
def repq_reparameterize(model: nn.Module, plan: dict, *, reduce: str = "mean") -> tuple[list[str], list[str]]:
    """Step 3 of RepQ-ViT on a calibrated model: fold each per-channel post-LN quantizer into LN + linear,
    replace it by the per-tensor quantizer ``(s̃, z̃)`` and un-calibrate that linear's weight quantizer.
    Updates ``plan`` in place; returns (reparameterized linears, linears that gained a bias)."""
    modules = dict(model.named_modules())
    done, added = [], []
    for norm_name, lin_name in post_ln_pairs(model, plan):
        lin = modules[lin_name]
        aq = lin.a_quant
        r, b, s_t, z_t = reparam_factors(aq.scale, aq.zero_point, reduce=reduce)
        if fold_into_norm_linear(modules[norm_name], lin, r, b):
            added.append(lin_name)
        spec = dict(plan[lin_name]["a_quant"], channels=None)
        new = make_quantizer(spec, where=f"{lin_name}.a_quant")
        new.scale.copy_(s_t)
        new.zero_point.copy_(z_t)
        new.calibrated = True
        lin.a_quant = new
        plan[lin_name]["a_quant"] = spec
        lin.w_quant.calibrated = False  # re-fitted by the second calibration pass (RepQ-ViT step 4)
        done.append(lin_name)
    return done, added


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
    if quantizers(model) or any(isinstance(m, QuantAttention) for m in model.modules()):
        raise ConfigError("model is already quantized: apply ptq to a float model (load the original again)")


def _restore(model: nn.Module, cfg: PTQConfig, decisions: dict) -> None:
    """Rebuild the quantized module structure on a fresh float model, before the strict state-dict load."""
    modules = dict(model.named_modules())
    for name in decisions.get("added_bias", []):
        lin = modules[name]
        lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype))
    install(model, decisions["plan"], calibrated=True)


@register_transform(PTQConfig, name="ptq", kind="numerics", paper="RepQ-ViT (Li et al., ICCV 2023)", restore=_restore)
def apply_ptq(model: nn.Module, cfg: PTQConfig, *, calib=None, dry_run: bool = False) -> dict[str, Any]:
    """Quantize ``model`` in place (fake-quant) with ``cfg``; ``calib``: ``[n,C,H,W]`` images or a dataset."""
    check_not_quantized(model)
    plan = build_plan(model, cfg)  # describe() refuses unsupported models, naming the feature
    for i, blk in enumerate(model.blocks):
        block_parts(blk, index=i)
    n_bits = {n: s["w_quant"]["bits"] for n, s in plan.items() if "w_quant" in s}
    head = f"W{cfg.w_bits}A{cfg.a_bits} {cfg.method}"
    if dry_run:
        return {"summary": f"{head}: would quantize {len(plan)} modules", "plan": plan, "weight_bits": n_bits}
    x = calibration_tensor(calib, model, cfg.calib_images, cfg.seed)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    fp_model = copy.deepcopy(model) if cfg.reconstruct_iters else None  # reconstruction target
    install(model, plan, calibrated=False)
    with torch.no_grad():
        model(x)  # calibration pass 1 (sequential: upstream quantizers already active)
        reparam, added = [], []
        if cfg.method in ("repq", "dopq"):
            reparam, added = repq_reparameterize(model, plan, reduce="median" if cfg.method == "dopq" else "mean")
            model(x)  # calibration pass 2: re-fit the reparameterized linears' weight quantizers
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
