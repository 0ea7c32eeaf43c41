"""Quantization figures → BENCHMARKS.md section "quant".

1. Accuracy on the reference model (vitkit_mnist_tiny, MNIST-5k test): FP32 and W8A8 / W6A6 / W4A4 ×
   {minmax, percentile, ptq4vit, repq, repq+dopq (median), mixed ~4-bit} and W4A4 repq + APHQ-style block
   reconstruction: top-1 and agreement with FP32, calibration time (32 train images, 2 threads).
2. Integer-only path (``vitkit.quant.to_integer``, I-ViT ops) and ONNX QDQ export with vitkit's scales
   (``vitkit.deploy.export_qdq``, run in ONNX Runtime) of the W8A8 RepQ-ViT model: top-1, agreement with the
   fake-quant model, max logit difference; artifact ``model.safetensors`` sizes with packed int8/int4 weights.
3. Deployment accuracy on the same model: ONNX Runtime fp32, ORT dynamic int8 with the tool's defaults,
   vitkit's deployment (RepQ reparameterization + ORT dynamic MatMul int8, per-channel, reduce_range),
   torch.ao dynamic int8 with and without the reparameterization.
4. Real CPU speed, same process, interleaved (random-init deit_small / deit_base at 224², batch 1 and 16):
   PyTorch fp32 eager vs ORT fp32 vs ORT dynamic int8 (defaults) vs vitkit deployed int8 vs torch.ao dynamic;
   best and median, ratios vs eager, file sizes.

Usage: python benchmarks/quant.py [--quick]
"""

from __future__ import annotations

import os

# Passive OpenMP waiting: on a shared, oversubscribed 2-core box spinning torch threads made fp32 eager 10× slower
# (measured 2.7 s vs 0.21 s, deit_small bs1) while ORT (allow_spinning=0) was unaffected; set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy
import logging
import tempfile
import time
import warnings
from pathlib import Path

import torch

import vitkit
from vitkit.bench import environment
from vitkit.bench.metrics import agreement, classify, topk_accuracy
from vitkit.bench.record import env_lines, write_section
from vitkit.bench.timing import interleaved_times, median
from vitkit.deploy import (
    OrtModule,
    deploy_int8,
    export_onnx,
    export_qdq,
    ort_dynamic_int8,
    reparameterize_,
    to_torch_dynamic,
)
from vitkit.quant import MixedPrecisionConfig, PTQConfig, to_integer

_log = logging.getLogger("benchmarks.quant")
warnings.filterwarnings("ignore")

METHODS = {
    "minmax": dict(method="minmax"),
    "percentile": dict(method="percentile"),
    "ptq4vit": dict(method="ptq4vit"),
    "repq": dict(method="repq"),
    "repq+dopq": dict(method="dopq"),
}


RECON_ITERS = 50


def _acc(model, data, base_logits, labels):
    logits, _ = classify(model, data)
    return topk_accuracy(logits, labels), agreement(logits, base_logits)["agreement"]


def accuracy_section(quick: bool) -> str:
    from vitkit.demo import reference_artifact

    ref = vitkit.load(reference_artifact())
    test = vitkit.data.load_dataset("mnist5k", "test", model=ref)
    calib = vitkit.data.calibration_set(vitkit.data.load_dataset("mnist5k", "train", model=ref), 32, seed=0)
    base_logits, labels = classify(ref, test)
    fp32 = topk_accuracy(base_logits, labels)
    fp32_bytes = sum(p.numel() * 4 for p in ref.parameters())
    rows = [f"| FP32 | {100 * fp32:.2f} | 100.00 | – | {fp32_bytes / 1e3:.0f} |"]
    bits_list = [(8, 8), (4, 4)] if quick else [(8, 8), (6, 6), (4, 4)]
    results = {}
    for wb, ab in bits_list:
        for label, kw in METHODS.items():
            if quick and label in ("percentile", "ptq4vit") and wb == 6:
                continue
            m = copy.deepcopy(ref)
            t0 = time.perf_counter()
            rep = vitkit.apply_(m, PTQConfig(w_bits=wb, a_bits=ab, **kw), calib=calib)
            secs = time.perf_counter() - t0
            top1, agree = _acc(m, test, base_logits, labels)
            results[(wb, label)] = top1
            size = rep.steps[0].decisions["packed_bytes"]
            rows.append(
                f"| W{wb}A{ab} {label} | {100 * top1:.2f} | {100 * agree:.2f} | {secs:.1f} | {size / 1e3:.0f} |"
            )
            _log.info("W%dA%d %s: %.4f", wb, ab, label, top1)
        if wb == 4:  # APHQ-ViT-style block reconstruction on top of RepQ-ViT (small CPU budget)
            m = copy.deepcopy(ref)
            t0 = time.perf_counter()
            rep = vitkit.apply_(
                m, PTQConfig(w_bits=wb, a_bits=ab, method="repq", reconstruct_iters=RECON_ITERS), calib=calib
            )
            secs = time.perf_counter() - t0
            top1, agree = _acc(m, test, base_logits, labels)
            size = rep.steps[0].decisions["packed_bytes"]
            rows.append(
                f"| W{wb}A{ab} repq + APH reconstruction ({RECON_ITERS} it/block) | {100 * top1:.2f} | "
                f"{100 * agree:.2f} | {secs:.1f} | {size / 1e3:.0f} |"
            )
        for score in ("hessian", "relevance") if wb == 4 else ():
            m = copy.deepcopy(ref)
            t0 = time.perf_counter()
            rep = vitkit.apply_(m, MixedPrecisionConfig(avg_bits=4.5, a_bits=ab, score=score), calib=calib)
            secs = time.perf_counter() - t0
            top1, agree = _acc(m, test, base_logits, labels)
            d = rep.steps[0].decisions
            rows.append(
                f"| mixed W~{d['avg_bits']:.2f} (4/6/8) A{ab} repq, {score} | {100 * top1:.2f} | {100 * agree:.2f} "
                f"| {secs:.1f} | {d['packed_bytes'] / 1e3:.0f} |"
            )
    head = (
        "| variant | top-1 % | agreement with FP32 % | calibration s (32 images) | packed weights kB |\n"
        "|---|---|---|---|---|"
    )
    integer = integer_section(ref, test, calib, base_logits, labels)
    # deployment accuracy
    dep_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fp32_onnx = export_onnx(ref, tmp / "fp32.onnx")
        variants = {
            "ORT fp32": OrtModule(fp32_onnx),
            "ORT dynamic int8, tool defaults": OrtModule(
                ort_dynamic_int8(
                    fp32_onnx, tmp / "ortdef.onnx", per_channel=False, reduce_range=False, matmul_only=False
                )
            ),
            "ORT dynamic int8 MatMul pc+rr, no reparam": OrtModule(ort_dynamic_int8(fp32_onnx, tmp / "ortpc.onnx")),
            "vitkit deployed int8 (RepQ reparam + ORT dynamic)": deploy_int8(ref, tmp / "vk", calib=calib),
            "torch.ao dynamic int8": to_torch_dynamic(ref),
            "vitkit deployed int8, torch backend (RepQ reparam + torch.ao)": deploy_int8(
                ref, tmp, calib=calib, backend="torch"
            ),
        }
        for name, mod in variants.items():
            top1, agree = _acc(mod, test, base_logits, labels)
            size = mod.file_bytes if isinstance(mod, OrtModule) else None
            dep_rows.append(
                f"| {name} | {100 * top1:.2f} | {100 * agree:.2f} | {f'{size / 1e3:.0f}' if size else '–'} |"
            )
    order = ""
    if (4, "minmax") in results and (4, "repq") in results:
        order = (
            f"\nW4A4 ordering: minmax {100 * results[(4, 'minmax')]:.2f} vs RepQ-ViT {100 * results[(4, 'repq')]:.2f}"
            f" (FP32 {100 * fp32:.2f}); W8A8 RepQ-ViT − FP32 = {100 * (results[(8, 'repq')] - fp32):+.2f} pt.\n"
        )
    return (
        f"### Accuracy on the reference model (vitkit_mnist_tiny, MNIST-5k test, {len(labels)} images)\n\n"
        "Fake-quant simulation; 32 calibration images from the train split (seed 0), 1 thread; per-channel weights,\n"
        "patch-embedding input 8 bit, head quantized. `packed weights` = quantized weights at their bit width\n"
        "+ fp32 scales + fp32 other parameters.\n\n"
        f"{head}\n" + "\n".join(rows) + "\n" + order + "\n"
        "### Deployed int8 accuracy (real int8 kernels, same model and test set)\n\n"
        "| variant | top-1 % | agreement with FP32 % | ONNX file kB |\n|---|---|---|---|\n"
        + "\n".join(dep_rows)
        + "\n"
        + integer
    )


def integer_section(ref, test, calib, base_logits, labels) -> str:
    """W8A8 RepQ-ViT model → integer-only (to_integer) and ONNX QDQ (export_qdq + ORT), vs its fake-quant twin."""
    fq = copy.deepcopy(ref)
    vitkit.apply_(fq, PTQConfig(w_bits=8, a_bits=8, method="repq"), calib=calib)
    fq_logits, _ = classify(fq, test)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        variants = {
            "fake-quant W8A8 repq (reference for this table)": fq,
            "integer-only (`to_integer`: int GEMMs, dyadic requant, I-LayerNorm, Shiftmax, ShiftGELU)": to_integer(fq),
            "ONNX QDQ (`export_qdq`, our scales) in ONNX Runtime": OrtModule(export_qdq(fq, tmp / "qdq.onnx")),
        }
        for name, mod in variants.items():
            t0 = time.perf_counter()
            logits, _ = classify(mod, test)
            secs = time.perf_counter() - t0
            top1 = topk_accuracy(logits, labels)
            a_fp = agreement(logits, base_logits)["agreement"]
            a_fq = agreement(logits, fq_logits)["agreement"]
            diff = float((logits - fq_logits).abs().max())
            size = f"{mod.file_bytes / 1e3:.0f}" if isinstance(mod, OrtModule) else "–"
            rows.append(
                f"| {name} | {100 * top1:.2f} | {100 * a_fp:.2f} | {100 * a_fq:.2f} | {diff:.4f} | {size} | "
                f"{secs:.1f} |"
            )
        sizes = {}
        vitkit.save_artifact(ref, None, None, tmp / "fp32")
        sizes["FP32"] = (tmp / "fp32" / "model.safetensors").stat().st_size
        vitkit.save_artifact(fq, None, None, tmp / "w8")
        sizes["W8A8 repq (int8 weights)"] = (tmp / "w8" / "model.safetensors").stat().st_size
        w4 = copy.deepcopy(ref)
        vitkit.apply_(w4, PTQConfig(w_bits=4, a_bits=4, method="repq"), calib=calib)
        vitkit.save_artifact(w4, None, None, tmp / "w4")
        sizes["W4A4 repq (int4 weights, 2 per byte)"] = (tmp / "w4" / "model.safetensors").stat().st_size
    size_rows = [f"| {k} | {v / 1e3:.0f} | {sizes['FP32'] / v:.2f}× |" for k, v in sizes.items()]
    logit_std = float(fq_logits.std())
    return (
        "\n### Integer-only path and ONNX QDQ export (W8A8 RepQ-ViT, same model and test set)\n\n"
        "Agreement and max |Δlogit| against the fake-quant model it comes from (logit std "
        f"{logit_std:.2f}). The integer path approximates softmax/GELU (Shiftmax/ShiftGELU, no QAT); the QDQ model\n"
        "emulates the log√2 softmax quantizer in float ops (no ONNX operator). Eval s: 500 images, 1 thread;\n"
        "the integer path emulates int GEMMs with int64 torch ops (not a speed path).\n\n"
        "| variant | top-1 % | agreement with FP32 % | agreement with fake-quant % | max abs Δ logit | ONNX file kB "
        "| eval s |\n|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        "Artifact `model.safetensors` (ptq artifacts store weights as packed integer codes + per-channel scales):\n\n"
        "| artifact | kB | smaller than FP32 |\n|---|---|---|\n" + "\n".join(size_rows) + "\n"
    )


def speed_section(quick: bool, threads: int) -> str:
    import timm

    archs = ["deit_small_patch16_224"] if quick else ["deit_small_patch16_224", "deit_base_patch16_224"]
    lines = [
        "| model | batch | variant | best s | median s | speed-up vs fp32 (best / median) | file MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for arch in archs:
        torch.manual_seed(0)
        model = timm.create_model(arch, pretrained=False).eval()
        calib = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        fp32_mb = sum(p.numel() * 4 for p in model.parameters()) / 1e6
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            fp32_onnx = export_onnx(model, tmp / "fp32.onnx")
            ort_def = ort_dynamic_int8(
                fp32_onnx, tmp / "ortdef.onnx", per_channel=False, reduce_range=False, matmul_only=False
            )
            vk = deploy_int8(model, tmp / "vk", calib=calib)
            rep = copy.deepcopy(model)
            reparameterize_(rep, calib)
            variants = {
                "PyTorch fp32 eager": (model, fp32_mb),
                "ORT fp32": (OrtModule(fp32_onnx, threads=threads), fp32_onnx.stat().st_size / 1e6),
                "ORT dynamic int8 (defaults)": (OrtModule(ort_def, threads=threads), ort_def.stat().st_size / 1e6),
                "vitkit deployed int8 (ORT)": (vk, vk.file_bytes / 1e6),
                "torch.ao dynamic int8": (to_torch_dynamic(model), None),
                "vitkit deployed int8 (torch backend)": (to_torch_dynamic(rep), None),
            }
            for batch in (1, 16):
                x = torch.randn(batch, 3, 224, 224)
                if batch == 1:
                    repeats, min_time = (5, 0.3) if quick else (7, 0.5)
                else:
                    repeats, min_time = (3, 0.0) if (quick or "base" in arch) else (5, 0.0)
                mods = [v[0] for v in variants.values()]
                times = interleaved_times(mods, x, repeats=repeats, warmup=1, min_time=min_time)
                b0, m0 = min(times[0]), median(times[0])
                for (name, (_, mb)), ts in zip(variants.items(), times, strict=True):
                    b, m = min(ts), median(ts)
                    lines.append(
                        f"| {arch.split('_patch')[0]} | {batch} | {name} | {b:.4f} | {m:.4f} | "
                        f"{b0 / b:.2f}× / {m0 / m:.2f}× | {f'{mb:.1f}' if mb else '–'} |"
                    )
                    _log.info("%s bs%d %s best %.4f", arch, batch, name, b)
    return (
        f"### Real int8 speed on this CPU ({threads} threads, random-init weights, 224² input)\n\n"
        "Variants interleaved round-robin in one process after warm-up; ORT sessions with "
        "`intra_op_num_threads` = torch threads and `session.intra_op.allow_spinning=0`; torch with\n"
        f"`OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}` (the box is shared). vitkit deployed int8 =\n"
        "RepQ-ViT reparameterization (8 calibration images) + ORT `quantize_dynamic` on MatMul, per-channel QInt8\n"
        "weights, `reduce_range=True`; ORT defaults = `quantize_dynamic` with no options (MatMul + Conv,\n"
        "per-tensor). torch.ao dynamic: `quantize_dynamic({nn.Linear}, qint8)` (fbgemm); its packed size is not a\n"
        "file (–). Batch-1 samples average several calls (≥ 0.3–0.5 s each).\n\n" + "\n".join(lines) + "\n"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer variants, deit_small only, fewer repeats")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--part", choices=("all", "accuracy", "speed"), default="all", help="sections to refresh")
    p.add_argument("--contended", action="store_true", help="label the accuracy section's timing columns contended")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    env = environment()
    env["threads"] = args.threads
    flag = " --quick" if args.quick else ""
    if args.part in ("all", "accuracy"):
        t0 = time.perf_counter()
        torch.set_num_threads(1)  # accuracy/calibration: many small ops, faster single-threaded on a shared box
        acc = accuracy_section(args.quick)
        env1 = dict(env, threads=1)
        write_section(
            "quant",
            f"## Post-training quantization: accuracy (`benchmarks/quant.py --part accuracy{flag}`)\n\n"
            + env_lines(env1)
            + "\n\n"
            + acc
            + (
                "\n**Timing columns (calibration s, eval s) of this run: contended (rerun quietly)** — the box was "
                "shared; accuracy columns are unaffected.\n"
                if args.contended
                else ""
            )
            + "\nImageNet-pretrained weights cannot be downloaded here, so the papers' ImageNet numbers (quant.md §2)"
            " are\nnot reproduced; accuracy figures are on the MNIST-5k reference model only.\n"
            f"\nSection time {time.perf_counter() - t0:.0f} s.\n",
        )
        _log.info("wrote the quant section of BENCHMARKS.md")
    if args.part in ("all", "speed"):
        t0 = time.perf_counter()
        torch.set_num_threads(args.threads)
        speed = speed_section(args.quick, args.threads)
        write_section(
            "quant_speed",
            f"## Post-training quantization: real int8 speed (`benchmarks/quant.py --part speed{flag}`)\n\n"
            + env_lines(env)
            + "\n\n"
            + speed
            + f"\nSection time {time.perf_counter() - t0:.0f} s.\n",
        )
        _log.info("wrote the quant_speed section of BENCHMARKS.md")


if __name__ == "__main__":
    main()
