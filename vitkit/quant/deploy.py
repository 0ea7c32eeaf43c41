"""Real int8 deployment on CPU: ONNX Runtime dynamic int8 (fastest measured path) or torch.ao dynamic int8.

Both runtimes quantize activations *per tensor*, which trained ViTs' post-LayerNorm outlier channels make
5–9× worse (see ``shared/methods/quant.md`` §5.5). vitkit therefore deploys the **RepQ-ViT
reparameterized** float model (LN scales folded into LN affine + next linear, exact in float, free at run
time): either the weights of a model calibrated with ``ptq`` (method repq/dopq), or a float model
reparameterized here from calibration images (:func:`reparameterize_`).

A trained ViT can also carry a few *massive* activation channels into a linear layer (the AugReg ViT-Ti: one
post-GELU ``fc2`` input channel at |x| = 213 against a median channel max of 2.6), which no per-tensor scale
survives; :func:`deploy_int8` keeps such input channels in float (:mod:`vitkit.quant.outliers`, LLM.int8()-style
decomposition; measured on that model: −2.8 → +1.0 pt at the same ×2.9 speed, BENCHMARKS.md "real").

Kernel choices follow measurements on AVX2 without VNNI (to be re-measured per machine): ORT
``quantize_dynamic`` on MatMul only, per-channel int8 weights with ``reduce_range=True`` (7-bit weights, so U8S8
``vpmaddubsw`` never saturates); torch.ao ``quantize_dynamic`` (fbgemm, always 7-bit activations).
``torch._int_mm`` and torchao's int8 path were 20× slower than fp32 on that machine and are not used.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..adapters.timm_vit import describe, input_size
from ..history import drop_steps, steps_named
from ..ops import quant as Q
from .modules import Quantizer, quantizers, unpatch_module
from .outliers import OUTLIER_PART, split_channels, split_channels_, split_outlier_inputs_
from .reparam import fold_into_norm_linear, reparam_factors

_log = logging.getLogger(__name__)

#: default outlier-channel ratio of :func:`deploy_int8` (input channels whose calibrated max exceeds this multiple
#: of the median channel's stay float); measured on the real ViT-Ti in BENCHMARKS.md "real" / int8 deployment
OUTLIER_RATIO = 8.0


def strip_quant(model: nn.Module) -> nn.Module:
    """A float copy of a ``ptq`` model: quantizers removed, (reparameterized) weights kept."""
    out = copy.deepcopy(model)
    for m in list(out.modules()):
        if any(isinstance(c, Quantizer) for c in m.children()):
            unpatch_module(m)
    drop_steps(out, lambda s: s.name == "ptq")
    return out.eval()


@torch.no_grad()
def reparameterize_(
    model: nn.Module, calib: torch.Tensor, *, bits: int = 8, reduce: str = "mean", search: str = "quantile"
) -> list[str]:
    """RepQ-ViT scale reparameterization of a *float* model in place: per-channel ``bits``-bit scales of each
    post-LN input (``qkv``, ``fc1``) from one float forward over ``calib``, folded into LN + linear.

    Differs from ``ptq``'s step 3 only in that the statistics come from the float model (no upstream
    quantization), which is what a runtime with its own activation quantization sees.
    """
    if quantizers(model):
        raise ValueError("model holds fake-quant modules: use strip_quant(model) (its weights are already folded)")
    describe(model)
    stats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(mod: nn.Module, args: tuple) -> None:  # per-channel scale/zero point of the post-LN input
        stats[id(mod)] = Q.search_uniform(args[0], bits, axis=-1, method=search)

    pairs = [(blk.norm1, blk.attn.qkv) for blk in model.blocks] + [(blk.norm2, blk.mlp.fc1) for blk in model.blocks]
    hooks = [lin.register_forward_pre_hook(hook) for _, lin in pairs]
    try:
        model.eval()
        model(calib)  # one float forward; folds preserve the function, so these statistics stay valid
    finally:
        for h in hooks:
            h.remove()
    names = {id(m): n for n, m in model.named_modules()}
    for norm, lin in pairs:
        s, z = stats[id(lin)]
        r, b, _, _ = reparam_factors(s, z, reduce=reduce)
        fold_into_norm_linear(norm, lin, r, b)
    return [names[id(lin)] for _, lin in pairs]


def to_torch_dynamic(model: nn.Module) -> nn.Module:
    """torch.ao dynamic int8 (fbgemm): int8 per-tensor weights, per-call 7-bit activations, Linear only (the
    ``outlier`` parts of :class:`~vitkit.quant.outliers.OutlierSplitLinear` stay float)."""
    import warnings

    float_model = strip_quant(model) if quantizers(model) else copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        names = {
            n for n, m in float_model.named_modules() if isinstance(m, nn.Linear) and OUTLIER_PART not in n.split(".")
        }
        return quantize_dynamic(float_model, names, dtype=torch.qint8)


def export_onnx(model: nn.Module, path: str | Path, *, batch: int = 1) -> Path:
    """Legacy (TorchScript) ONNX export, opset 17, dynamic batch, of the float (stripped) model."""
    float_model = strip_quant(model) if quantizers(model) else model.eval()
    path = Path(path)
    example = torch.randn(batch, *input_size(float_model))
    torch.onnx.export(
        float_model,
        (example,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
    )
    return path


def ort_dynamic_int8(
    src: str | Path, dst: str | Path, *, per_channel: bool = True, reduce_range: bool = True, matmul_only: bool = True
) -> Path:
    """ORT dynamic int8: ``quant_pre_process`` then ``quantize_dynamic`` (QInt8 weights). vitkit's deployment uses
    MatMul only, per-channel, ``reduce_range``; ``matmul_only=False, per_channel=False, reduce_range=False`` are
    ORT's own defaults. MatMuls under an ``outlier`` module (:mod:`vitkit.quant.outliers`) stay float."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dst = Path(dst)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        import onnx

        keep_float = [n.name for n in onnx.load(str(pre)).graph.node if f"/{OUTLIER_PART}/" in n.name]
        quantize_dynamic(
            str(pre),
            str(dst),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"] if matmul_only else None,
            per_channel=per_channel,
            reduce_range=reduce_range,
            nodes_to_exclude=keep_float,
        )
    return dst


class OrtModule(nn.Module):
    """An ONNX Runtime session behind ``forward(x) -> logits`` so that it can be timed beside PyTorch models.

    Threads: ``intra_op_num_threads = torch.get_num_threads()``, and ``session.intra_op.allow_spinning = 0`` so
    that idle ORT threads do not steal the CPU from interleaved PyTorch variants."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads or torch.get_num_threads())
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = str(path)
        self.session = ort.InferenceSession(self.path, so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)})
        return torch.from_numpy(out[0])

    @property
    def file_bytes(self) -> int:
        return Path(self.path).stat().st_size


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
            raise ValueError("deploy_int8 of a float model needs calib images for the RepQ-ViT reparameterization")
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


def deploy_int8(
    model: nn.Module,
    out_dir: str | Path,
    *,
    calib: torch.Tensor | None = None,
    backend: str = "ort",
    reduce: str = "mean",
    outliers: float | None = OUTLIER_RATIO,
) -> nn.Module:
    """vitkit's int8 deployment of ``model``: RepQ-ViT reparameterization (already in a ``ptq`` repq/dopq model's
    weights; otherwise computed from ``calib``), outlier input channels kept in float (``outliers``: the ratio to
    the median channel's max, None = off; needs ``calib``), then ORT dynamic int8 (``backend="ort"``, writes
    ``out_dir/model.int8.onnx``) or torch.ao dynamic int8 (``backend="torch"``). Returns a runnable module whose
    ``outlier_channels`` attribute says which input channels stayed float (``{linear name: [channels]}``)."""
    if backend not in ("ort", "torch"):
        raise ValueError(f"backend must be 'ort' or 'torch', got {backend!r}")
    float_model = int8_float_model(model, calib, reduce=reduce, outliers=outliers)
    if backend == "torch":
        runner = to_torch_dynamic(float_model)
    else:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        fp32 = export_onnx(float_model, out_dir / "model.fp32.onnx")
        runner = OrtModule(ort_dynamic_int8(fp32, out_dir / "model.int8.onnx"))
        fp32.unlink()
    runner.outlier_channels = split_channels(float_model)
    return runner
