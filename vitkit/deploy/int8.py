"""The float model an int8 runtime quantizes, and the torch.ao dynamic int8 runtime.

Both int8 runtimes vitkit deploys to (ONNX Runtime dynamic int8, torch.ao dynamic int8) quantize activations
*per tensor*, which trained ViTs' post-LayerNorm outlier channels make 5–9× worse (see
``shared/methods/quant.md`` §5.5). vitkit therefore deploys the **RepQ-ViT reparameterized** float model (Li et
al., ICCV 2023, §4.2: LN scales folded into LN affine + next linear, exact in float, free at run time): either the
weights of a model calibrated with ``ptq`` (method repq/dopq), or a float model reparameterized here from
calibration images (:func:`reparameterize_`).

A trained ViT can also carry a few *massive* activation channels into a linear layer (the AugReg ViT-Ti: one
post-GELU MLP-out input channel at |x| = 213 against a median channel max of 2.6), which no per-tensor scale
survives; :func:`int8_float_model` keeps such input channels in float (:mod:`vitkit.quant.outliers`,
LLM.int8()-style decomposition; measured on that model: −2.8 → +1.0 pt at the same ×2.9 speed, BENCHMARKS.md
"real").

torch.ao ``quantize_dynamic`` (fbgemm) always uses 7-bit activations.
"""

from __future__ import annotations

import copy
import logging
import warnings

import torch
import torch.nn as nn

from ..adapters.protocol import adapter_for
from ..errors import DeployError
from ..history import drop_steps, steps_named
from ..ops import quant as Q
from ..quant.modules import quantizers, unpatch_module
from ..quant.outliers import OUTLIER_PART, split_channels_, split_outlier_inputs_
from ..quant.quantizer import Quantizer
from ..quant.reparam import fold_into_norm_linears, reparam_factors
from ..validate import check_choice
from .trace import first_line

_log = logging.getLogger(__name__)

#: default outlier-channel ratio of the int8 deployment (input channels whose calibrated max exceeds this multiple
#: of the median channel's stay float); measured on the real ViT-Ti in BENCHMARKS.md "real" / int8 deployment
OUTLIER_RATIO = 8.0

#: how RepQ-ViT's per-tensor scale is reduced from the per-channel ones (mean: RepQ-ViT, median: DopQ-ViT)
REDUCE = ("mean", "median")


def strip_quant(model: nn.Module) -> nn.Module:
    """A float copy of a ``ptq`` model: quantizers removed, (reparameterized) weights kept."""
    out = copy.deepcopy(model)
    for m in list(out.modules()):
        if any(isinstance(c, Quantizer) for c in m.children()):
            unpatch_module(m)
    drop_steps(out, lambda s: s.name == "ptq")
    return out.eval()


def float_model_of(model: nn.Module) -> nn.Module:
    """``model`` itself (in eval mode) when it is float, else its :func:`strip_quant` copy."""
    return strip_quant(model) if quantizers(model) else model.eval()


@torch.no_grad()
def reparameterize_(
    model: nn.Module, calib: torch.Tensor, *, bits: int = 8, reduce: str = "mean", search: str = "quantile"
) -> list[str]:
    """RepQ-ViT scale reparameterization of a *float* model in place: per-channel ``bits``-bit scales of each
    post-LN linear input (the host's norm → linear pairs: attention in, MLP in) from one float forward over
    ``calib``, folded into LN + linear (Li et al., ICCV 2023, eq. 6–9). Returns the folded linears' names,
    attention pairs first.

    Differs from ``ptq``'s reparameterization only in that the statistics come from the float model (no
    upstream quantization), which is what a runtime with its own activation quantization sees.
    """
    if quantizers(model):
        raise DeployError("model holds fake-quant modules: use strip_quant(model) (its weights are already folded)")
    check_choice(reduce, "reduce", REDUCE)
    host = adapter_for(model)
    host.describe(model)
    modules = dict(model.named_modules())
    pairs = sorted(host.norm_linear_pairs(model), key=lambda p: p.role != "attn")  # stable: attn, then mlp
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook_for(name: str):
        def hook(mod: nn.Module, args: tuple) -> None:  # per-channel scale/zero point of the post-LN input
            stats[name] = Q.search_uniform(args[0], bits, axis=-1, method=search)

        return hook

    host.route_linears(model, [p.linears[0] for p in pairs])  # the forward must call them (EVA reads qkv.weight)
    hooks = [modules[p.linears[0]].register_forward_pre_hook(hook_for(p.linears[0])) for p in pairs]
    try:
        model.eval()
        model(calib)  # one float forward; folds preserve the function, so these statistics stay valid
    finally:
        for h in hooks:
            h.remove()
    for p in pairs:
        s, z = stats[p.linears[0]]
        r, b, _, _ = reparam_factors(s, z, reduce=reduce)
        fold_into_norm_linears(modules[p.norm], [modules[n] for n in p.linears], r, b)  # all linears it feeds
    return [p.linears[0] for p in pairs]


def to_torch_dynamic(model: nn.Module) -> nn.Module:
    """torch.ao dynamic int8 (fbgemm): int8 per-tensor weights, per-call 7-bit activations, Linear only (the
    ``outlier`` parts of :class:`~vitkit.quant.outliers.OutlierSplitLinear` stay float)."""
    float_model = strip_quant(model) if quantizers(model) else copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        names = {
            n for n, m in float_model.named_modules() if isinstance(m, nn.Linear) and OUTLIER_PART not in n.split(".")
        }
        try:
            return quantize_dynamic(float_model, names, dtype=torch.qint8)
        except RuntimeError as exc:  # e.g. no quantized engine for this CPU
            raise DeployError(
                f"torch.ao dynamic int8 failed: {first_line(exc)}; deploy with backend 'ort' instead"
            ) from exc


def _float_channels(q: Quantizer) -> list[int]:
    return list(getattr(q, "float_channels", None) or [])


def int8_float_model(
    model: nn.Module, calib: torch.Tensor | None, *, reduce: str = "mean", outliers: float | None = OUTLIER_RATIO
) -> nn.Module:
    """The float model an int8 runtime should quantize: a ``ptq`` (repq/dopq) model's reparameterized weights
    (quantizers stripped), or a RepQ-ViT reparameterization of a float model computed from ``calib``; then, with
    ``calib`` and ``outliers`` set, input channels above ``outliers`` × the median channel's calibrated max kept
    in float (:func:`~vitkit.quant.outliers.split_outlier_inputs_`). ``model`` is not modified."""
    kept: dict[str, list[int]] = {}
    if quantizers(model):
        steps = steps_named(model, "ptq")
        if steps and not steps[-1].decisions.get("reparameterized"):
            _log.warning("ptq model was not RepQ-reparameterized; per-tensor int8 may suffer from outlier channels")
        kept = {n[: -len(".a_quant")]: q.float_channels for n, q in quantizers(model).items() if _float_channels(q)}
        float_model = strip_quant(model)
    else:
        if calib is None:
            raise DeployError(
                "int8 deployment of a float model needs calibration images for the RepQ-ViT reparameterization: "
                "pass calib=<images> (or quantize it with a ptq step first)"
            )
        float_model = copy.deepcopy(model).eval()
        reparameterize_(float_model, calib, reduce=reduce)
    if kept:  # PTQConfig(outlier_ratio=...) already chose them: deploy what was simulated
        split_channels_(float_model, kept)
    elif outliers is not None:
        if calib is None:
            _log.warning("no calibration images: outlier input channels are not detected (pass calib=...)")
        else:
            split_outlier_inputs_(float_model, calib, ratio=outliers)
    return float_model
