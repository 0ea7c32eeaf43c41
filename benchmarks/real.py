"""Every vitkit method on a real pretrained ImageNet ViT → the "real" section of BENCHMARKS.md.

Model: timm ``vit_tiny_patch16_224.augreg_in21k_ft_in1k`` (5.72M parameters, ``--weights``). Data: 1,000 real
ImageNet images, one per class (``--data``), cut by vitkit's seeded folder split into calib 100 / train 300 /
val 100 / test 500 (:data:`SPLIT`); every split is decoded once and kept in memory. Every row: top-1 on the test
images, top-1 agreement with the fp32 model, Δ top-1 vs fp32; speed rows: batch-16 throughput ratio vs PyTorch
fp32 eager, measured in the same process with interleaved timing (2 threads).

Parts (``--part all|tokens|ptq|ptq_options|deploy|prune|early_exit|compose|lora``, comma list ok), each stored in
``benchmarks/real_results.json`` under its name; the section is always rebuilt from every stored part, so parts
can run in separate processes:

- ``tokens``: ToMe / PiToMe / EViT / HiPrune at matched block-MAC ratios ×1.3/×1.5/×2 (random drop at ToMe's
  token counts as control) and ToMe r=13.
- ``ptq``: W8A8/W6A6/W4A4 × minmax, percentile, PTQ4ViT, RepQ, RepQ+DopQ, RepQ+APHQ; mixed precision ~4.5/~6
  bits; ablation: one activation family quantized at a time (W4A4, W6A6).
- ``ptq_options``: RepQ W8A8/W6A6/W4A4 faithful vs ``post_gelu='twin'`` / ``outlier_ratio=8`` (together they equal
  twin alone: the outlier split applies to uniform quantizers only).
- ``deploy``: ORT fp32, vitkit int8 deployment (ORT / torch.ao) of the RepQ-calibrated model (with and without the
  outlier-channel split), integer-only twin.
- ``prune``: 30 % / 50 % of MACs × every saliency without recovery; KD recovery from the original for the best
  saliency on val per ratio (``--kd-all``: every one).
- ``early_exit``: LGViT exit heads trained on train, thresholds calibrated on val; batch-1 latency ratio.
- ``compose``: prune 30 % → KD → W8A8 RepQ → ORT int8 deployment, with and without ToMe.
- ``lora``: LoRA / HiRA (rank inside 5 % of the parameters) vs full fine-tuning on scikit-learn digits.

Usage: .venv/bin/python benchmarks/real.py --part tokens [--quick] [--epochs N] [--weights PATH] [--data DIR]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import fnmatch
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import vitkit  # noqa: E402
from benchmarks.adapt import fresh_task_model, run_variant  # noqa: E402
from benchmarks.early_exit import latency_ratio  # noqa: E402
from benchmarks.tokens import knobs, patched, theory  # noqa: E402
from vitkit._io import atomic_write_text  # noqa: E402
from vitkit.bench import environment  # noqa: E402
from vitkit.bench.flops import count_macs  # noqa: E402
from vitkit.bench.metrics import agreement, classify, topk_accuracy  # noqa: E402
from vitkit.bench.record import env_lines, write_section  # noqa: E402
from vitkit.bench.timing import interleaved_times, median  # noqa: E402
from vitkit.data import TensorImageDataset, input_spec, iterate_batches, load_dataset  # noqa: E402
from vitkit.deploy import OrtModule, deploy_int8, export_onnx  # noqa: E402
from vitkit.distill import DistillConfig, distill  # noqa: E402
from vitkit.early_exit import EarlyExitConfig, calibrate, evaluate_exits, reset_histogram, train_exit_heads  # noqa: E402
from vitkit.early_exit.config import EXIT_TRAIN  # noqa: E402
from vitkit.prune import PruneConfig  # noqa: E402
from vitkit.quant import MixedPrecisionConfig, PTQConfig, quantizers, to_integer  # noqa: E402
from vitkit.tokens import RandomDropConfig, ToMeConfig  # noqa: E402

_log = logging.getLogger("benchmarks.real")
RESULTS = ROOT / "benchmarks" / "real_results.json"
OUT = ROOT / "BENCHMARKS.md"
ARCH = "vit_tiny_patch16_224"
REAL = ROOT.parent / "shared" / "real"
WEIGHTS = REAL / "vit_tiny_patch16_224.augreg_in21k_ft_in1k.safetensors"
DATA = REAL / "imagenet-sample"
SPLIT = "calib:0.1,train:0.3,val:0.1,test:0.5"
PARTS = ("tokens", "ptq", "ptq_options", "deploy", "prune", "early_exit", "compose", "lora")
#: images per split in --quick mode (a smoke run: figures meaningless)
QUICK_N = {"test": 32, "calib": 16, "train": 32, "val": 32}
BATCH = 16
#: KD recovery (prune, compose): soft KD from the unpruned model, labels unused (one image per class), AdamW
#: with warm-up then cosine; augmentation: random ±16 px shifts and ±10 % zoom of the 224² images
KD = dict(loss="soft", alpha=1.0, temperature=1.0)
KD_TRAIN = dict(batch_size=32, lr=2e-4, warmup_epochs=0.5, shift=16.0, scale=0.1)


def pct(v: float) -> str:
    return f"{100 * v:.2f}"


def pts(v: float) -> str:
    return f"{100 * v:+.2f}"


def met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def table(head: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


# -- the model, the data and the measurements shared by all parts -------------------------------------------------
class Ctx:
    """The fp32 model, the in-memory splits, the fp32 test logits, and the accuracy / speed helpers."""

    def __init__(self, args) -> None:
        self.args, self.quick = args, args.quick
        self.repeats = 2 if args.quick else 7
        self.model = vitkit.load(args.weights, arch=ARCH).eval()
        self.spec = dataclasses.replace(input_spec(self.model), mean=(0.0,) * 3, std=(1.0,) * 3)  # identity
        self.name = f"imagefolder:{args.data}?classes=imagenet&split={SPLIT}&seed=0"
        self._splits: dict[str, TensorImageDataset] = {}
        self._base = None
        self.rule: str | None = None
        self.sizes: dict[str, int] = {}
        self.used: set[str] = set()

    def split(self, which: str) -> TensorImageDataset:
        """One split, decoded once: normalised ``[N, 3, 224, 224]`` images behind an identity transform."""
        self.used.add(which)
        if which not in self._splits:
            t0 = time.perf_counter()
            ds = load_dataset(self.name, which, model=self.model)
            limit = QUICK_N[which] if self.quick else None
            xs, ys = zip(*((x, torch.as_tensor(y)) for x, y in iterate_batches(ds, 50, limit=limit)), strict=True)
            self._splits[which] = TensorImageDataset(torch.cat(xs), torch.cat(ys), self.spec, name=which)
            self.rule = getattr(ds, "split_rule", None) or self.rule
            self.sizes[which] = len(self._splits[which])
            _log.info("decoded %s: %d images in %.1f s", which, len(self._splits[which]), time.perf_counter() - t0)
        return self._splits[which]

    @property
    def base(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._base is None:
            self._base = classify(self.model, self.split("test"))
        return self._base

    def fp32(self) -> dict:
        logits, labels = self.base
        return {"top1": topk_accuracy(logits, labels), "images": len(labels)}

    def score(self, model) -> dict:
        """Test top-1, agreement with fp32 and Δ top-1 vs fp32."""
        base_logits, labels = self.base
        logits, _ = classify(model, self.split("test"))
        top1 = topk_accuracy(logits, labels)
        return {"top1": top1, "agree": agreement(logits, base_logits)["agreement"], "delta": top1 - self.fp32()["top1"]}

    def calib(self) -> torch.Tensor:
        """The first ``--calib-images`` of the calib split (32 by default, RepQ-ViT's calibration size)."""
        return self.split("calib").images[: self.args.calib_images]

    def speed(self, models: list, repeats: int | None = None) -> list[float]:
        """Batch-16 images/s of each model (real test images), interleaved, median of repeats."""
        x = self.split("test").images[:BATCH]
        times = interleaved_times(models, x, repeats=repeats or self.repeats, warmup=1)
        return [x.shape[0] / median(t) for t in times]

    def kd(self, student, epochs: int) -> dict:
        cfg = DistillConfig(**KD, train={**KD_TRAIN, "lr": self.args.kd_lr, "epochs": epochs})
        return distill(student, self.model, self.split("train"), cfg)


def macs(model) -> float:
    return float(count_macs(model, torch.zeros(1, 3, 224, 224)))


# -- 1. token reduction ---------------------------------------------------------------------------------------------
TOKEN_TARGETS = (1.3, 1.5, 2.0)
TOKEN_METHODS = ("ToMe", "PiToMe", "EViT", "HiPrune")


def token_row(ctx: Ctx, method: str, target, cfg, ratio: float, d: dict) -> tuple[dict, torch.nn.Module]:
    m, _ = patched(ctx.model, cfg)
    knob = {k: v for k, v in cfg.to_dict().items() if k in ("r", "keep_rate", "ratio", "keep")}
    if isinstance(knob.get("r"), list):
        knob = {"r": "ToMe's per layer"}
    row = {"method": method, "target": target, "knob": knob, "mac_ratio": ratio, "tokens": d["tokens_per_layer"][-1]}
    row.update(ctx.score(m))
    _log.info("tokens %s %s: top-1 %.4f", target, method, row["top1"])
    return row, m


def knob_table(model, method: str) -> list[tuple]:
    """``(config, MAC ratio, decisions)`` for every knob of ``method`` (dry runs, one model copy)."""
    probe = copy.deepcopy(model)
    for name in ("vitkit.tokens.patch", "vitkit.api"):  # the search tries r values that clip; no plan logs
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        out = []
        for cfg in knobs(method):
            d = vitkit.apply_(probe, cfg, dry_run=True).steps[0].decisions
            out.append((cfg, theory(model, d), d))
        return out
    finally:
        logging.getLogger("vitkit.api").setLevel(logging.NOTSET)


def part_tokens(ctx: Ctx) -> dict:
    """Each method's knob closest to each MAC target (benchmarks/tokens.py's rule), one knob search per method."""
    tables = {meth: knob_table(ctx.model, meth) for meth in TOKEN_METHODS}
    rows = []
    for target in TOKEN_TARGETS:
        picks = [min(tables[meth], key=lambda p, t=target: abs(p[1] - t)) for meth in TOKEN_METHODS]
        got = [token_row(ctx, meth, target, *p) for meth, p in zip(TOKEN_METHODS, picks, strict=True)]
        rd = RandomDropConfig(r=list(picks[0][2]["r_per_layer"]), seed=0)
        d = vitkit.apply_(copy.deepcopy(ctx.model), rd, dry_run=True).steps[0].decisions
        got.append(token_row(ctx, "random drop (ToMe's counts)", target, rd, theory(ctx.model, d), d))
        timed(ctx, got)
        rows += [r for r, _ in got]
    cfg = ToMeConfig(r=13)
    d = vitkit.apply_(copy.deepcopy(ctx.model), cfg, dry_run=True).steps[0].decisions
    got = [token_row(ctx, "ToMe", "r=13", cfg, theory(ctx.model, d), d)]
    timed(ctx, got)
    return {"rows": rows + [got[0][0]]}


def timed(ctx: Ctx, got: list[tuple[dict, torch.nn.Module]]) -> None:
    """Adds ``speedup`` (batch-16 throughput ratio vs fp32, interleaved with it) to each row."""
    ips = ctx.speed([ctx.model, *(m for _, m in got)])
    for (row, _), v in zip(got, ips[1:], strict=True):
        row["speedup"] = v / ips[0]


def render_tokens(res: dict) -> list[str]:
    rows = res["rows"]
    body = [
        [
            r["target"] if isinstance(r["target"], str) else f"×{r['target']}",
            r["method"],
            ", ".join(f"{k}={v}" for k, v in r["knob"].items()),
            r["tokens"],
            f"×{r['mac_ratio']:.2f}",
            f"×{r['speedup']:.2f}",
            pct(r["top1"]),
            pts(r["delta"]),
            pct(r["agree"]),
        ]
        for r in rows
    ]
    out = table(
        [
            "MAC target",
            "method",
            "setting",
            "final tokens",
            "MAC ratio",
            "bs16 throughput",
            "top-1 %",
            "Δ pt",
            "agree %",
        ],
        body,
    )
    return out + ["", *token_checks(rows)]


def token_checks(rows: list[dict]) -> list[str]:
    by = {(r["target"], r["method"]): r for r in rows}
    checks = []
    tome13 = by.get(("r=13", "ToMe"))
    if tome13:
        checks.append(["ToMe r=13 vs fp32", f"{pts(tome13['delta'])} pt", "≥ −2.5 pt", met(tome13["delta"] >= -0.025)])
    for t in TOKEN_TARGETS:
        rd, tome, pi = (by.get((t, m)) for m in ("random drop (ToMe's counts)", "ToMe", "PiToMe"))
        if not (rd and tome and pi):
            continue
        for name, r in (("ToMe", tome), ("PiToMe", pi)):
            gap = r["top1"] - rd["top1"]
            checks.append([f"{name} − random drop at ×{t}", f"{pts(gap)} pt", "> 0", met(gap > 0)])
        gap = pi["top1"] - tome["top1"]
        checks.append([f"PiToMe − ToMe at ×{t}", f"{pts(gap)} pt", "≥ 0", met(gap >= 0)])
    return table(["figure", "value", "target", "met"], checks)


# -- 2. post-training quantization ----------------------------------------------------------------------------------
PTQ_BITS = (8, 6, 4)
#: the costly rows run where the issue sets a figure: APHQ and the family ablation at W4A4, mixed with one score
APHQ_BITS, ABLATE_BITS, MIXED_SCORES = (4,), (4,), ("hessian",)
PTQ_METHODS = {
    "minmax": "minmax",
    "percentile": "percentile",
    "PTQ4ViT": "ptq4vit",
    "RepQ": "repq",
    "RepQ+DopQ": "dopq",
}
#: activation families for the ablation: quantizer-name globs switched on (everything else off, weights float)
FAMILIES = {
    "post-LN (qkv, fc1 inputs)": ("blocks.*.attn.qkv.a_quant", "blocks.*.mlp.fc1.a_quant"),
    "post-softmax (attention map)": ("blocks.*.attn.attn_quant",),
    "q, k, v (attention matmul inputs)": ("blocks.*.attn.q_quant", "blocks.*.attn.k_quant", "blocks.*.attn.v_quant"),
    "post-GELU (fc2 inputs)": ("blocks.*.mlp.fc2.a_quant",),
    "attention proj inputs": ("blocks.*.attn.proj.a_quant",),
    "head input": ("head.a_quant",),
    "patch-embedding input (8 bit)": ("patch_embed.proj.a_quant",),
    "all activations (weights float)": ("*_quant", "!*.w_quant"),
    "weights only": ("*.w_quant",),
    "everything (= the RepQ row)": ("*",),
}


def ptq_row(ctx: Ctx, name: str, cfg) -> tuple[dict, torch.nn.Module]:
    m = copy.deepcopy(ctx.model)
    t0 = time.perf_counter()
    d = vitkit.apply_(m, cfg, calib=ctx.calib()).steps[0].decisions
    row = {"name": name, "bits": cfg.a_bits, "calib_s": time.perf_counter() - t0, "kb": d["packed_bytes"] / 1e3}
    row["avg_bits"] = d.get("avg_bits")
    row.update(ctx.score(m))
    _log.info("ptq %s: top-1 %.4f (%.0f s calibration)", name, row["top1"], row["calib_s"])
    return row, m


def part_ptq(ctx: Ctx) -> dict:
    n, iters = ctx.calib().shape[0], ctx.args.recon_iters
    rows, ablation = [], []
    for b in PTQ_BITS:
        for label, method in PTQ_METHODS.items():
            row, m = ptq_row(ctx, f"W{b}A{b} {label}", PTQConfig(w_bits=b, a_bits=b, method=method, calib_images=n))
            rows.append(row)
            if method == "repq" and b in ABLATE_BITS:
                ablation += ablate(ctx, m, b)
        if b in APHQ_BITS:
            cfg = PTQConfig(w_bits=b, a_bits=b, method="repq", calib_images=n, reconstruct_iters=iters)
            rows.append(ptq_row(ctx, f"W{b}A{b} RepQ+APHQ", cfg)[0])
    for avg, a_bits in ((4.5, 4), (6.0, 6)):
        for score in MIXED_SCORES:
            cfg = MixedPrecisionConfig(avg_bits=avg, a_bits=a_bits, score=score, calib_images=n)
            rows.append(ptq_row(ctx, f"mixed ~{avg:g} bits (4/6/8) A{a_bits} RepQ, {score}", cfg)[0])
    return {"rows": rows, "ablation": ablation, "calib_images": n, "recon_iters": iters}


def ablate(ctx: Ctx, model, bits: int) -> list[dict]:
    """The calibrated RepQ ``model`` with only one family of quantizers switched on, for each family."""
    qs = quantizers(model)
    out = []
    try:
        for fam, globs in FAMILIES.items():
            on = [n for n in qs if family_match(n, globs)]
            for name, q in qs.items():
                q.enabled = name in on
            out.append({"family": fam, "bits": bits, "quantizers": len(on), **ctx.score(model)})
    finally:
        for q in qs.values():
            q.enabled = True
    return out


def family_match(name: str, globs: tuple[str, ...]) -> bool:
    pos = [g for g in globs if not g.startswith("!")]
    neg = [g[1:] for g in globs if g.startswith("!")]
    return any(fnmatch.fnmatch(name, g) for g in pos) and not any(fnmatch.fnmatch(name, g) for g in neg)


def ptq_target(name: str, by: dict) -> tuple[str, str]:
    """(target text, met) for the rows the figures name."""
    r = by[name]
    if name == "W8A8 RepQ":
        return "≥ −0.5 pt", met(r["delta"] >= -0.005)
    if name == "W6A6 RepQ":
        return "≥ −1.5 pt", met(r["delta"] >= -0.015)
    if name == "W4A4 RepQ" and "W4A4 minmax" in by:
        ok = r["top1"] - by["W4A4 minmax"]["top1"] >= 0.15 and r["delta"] >= -0.20
        return "≥ minmax + 15 pt and ≥ −20 pt", met(ok)
    if name == "W4A4 RepQ+APHQ" and "W4A4 RepQ" in by:
        return "≥ W4A4 RepQ", met(r["top1"] >= by["W4A4 RepQ"]["top1"])
    if name.startswith("mixed ~6 "):
        return "≥ −1 pt", met(r["delta"] >= -0.01)
    return "", ""


def render_ptq(res: dict) -> list[str]:
    by = {r["name"]: r for r in res["rows"]}
    body = []
    for r in res["rows"]:
        bits = f"{r['avg_bits']:.2f}" if r.get("avg_bits") else ""
        tgt = ptq_target(r["name"], by)
        body.append(
            [r["name"], bits, pct(r["top1"]), pts(r["delta"]), pct(r["agree"]), f"{r['calib_s']:.0f}", f"{r['kb']:.0f}"]
            + list(tgt)
        )
    head = ["variant", "avg w bits", "top-1 %", "Δ pt", "agree %", "calib s", "packed kB", "target", "met"]
    lines = [
        f"Fake-quant simulation, {res['calib_images']} calibration images (from the calib split); per-channel weights, "
        f"patch-embedding input 8 bit, head quantized. APHQ: RepQ + block reconstruction, {res['recon_iters']} "
        "Adam steps per block. Mixed: per-layer weight bits from {4, 6, 8} for the average, activations at A.",
        "",
        *table(head, body),
        "",
        *render_ablation(res["ablation"]),
    ]
    return lines


#: RepQ-ViT with the options the ablation points to (post-GELU fc2 inputs), beside the faithful default
PTQ_OPTIONS = {
    "RepQ + twin-uniform fc2 inputs (`post_gelu='twin'`)": {"post_gelu": "twin"},
    "RepQ + outlier channels float (`outlier_ratio=8`)": {"outlier_ratio": 8.0},
}


#: bit width whose outlier-split model gets the per-family ablation (where the W6A6 target is missed)
OPTIONS_ABLATE_BITS = 6


def part_ptq_options(ctx: Ctx) -> dict:
    """The options at every bit width; the faithful RepQ row (same calibration) is copied from the ptq part when
    it was run with the same images, else measured here; the family ablation of the W6A6 outlier-split model."""
    n, rows, ablation = ctx.calib().shape[0], [], []
    stored = load_results().get("ptq", {})
    faithful = {r["name"]: r for r in stored.get("rows", [])} if stored.get("calib_images") == n else {}
    for b in PTQ_BITS:
        name = f"W{b}A{b} RepQ"
        if name in faithful and not ctx.quick:
            rows.append({**faithful[name], "name": f"{name} (faithful; from the ptq part)"})
        else:
            rows.append(ptq_row(ctx, f"{name} (faithful)", PTQConfig(w_bits=b, a_bits=b, calib_images=n))[0])
        for label, extra in PTQ_OPTIONS.items():
            cfg = PTQConfig(w_bits=b, a_bits=b, method="repq", calib_images=n, **extra)
            row, m = ptq_row(ctx, f"W{b}A{b} {label}", cfg)
            row["float_channels"] = m.vitkit_steps[-1].decisions.get("float_channels", {})
            rows.append(row)
            if b == OPTIONS_ABLATE_BITS and "outlier_ratio" in extra:
                ablation = ablate(ctx, m, b)
    return {"rows": rows, "calib_images": n, "ablation": ablation}


def render_ptq_options(res: dict) -> list[str]:
    body, faithful = [], {}
    for r in res["rows"]:
        bits = r["name"].split()[0]
        faithful.setdefault(bits, r)
        gain = r["top1"] - faithful[bits]["top1"]
        target, ok = {"W8A8": ("≥ −0.5 pt", -0.005), "W6A6": ("≥ −1.5 pt", -0.015)}.get(bits, ("", None))
        okay = met(r["delta"] >= ok) if ok is not None else ""
        kept = "; ".join(f"{k} {v}" for k, v in r.get("float_channels", {}).items()) or "–"
        body.append([r["name"], pct(r["top1"]), pts(r["delta"]), pct(r["agree"]), pts(gain), kept, target, okay])
    head = ["variant", "top-1 %", "Δ pt", "agree %", "vs faithful RepQ", "float channels", "target", "met"]
    out = [
        "The ablation above puts the loss in the post-GELU `fc2` inputs: on this AugReg model one `fc2` input channel "
        "(block 7) peaks at |x| ≈ 213 while the median channel peaks at ≈ 2.6, so a per-tensor uniform scale either "
        "clips it or leaves every other channel a handful of codes. Two options of `PTQConfig` (off by default; the "
        "faithful RepQ-ViT stays the default) address it: PTQ4ViT's twin-uniform quantizer for fc2 inputs "
        "(`post_gelu='twin'`), and keeping input channels above 8× the median channel's calibrated max in float "
        "(`outlier_ratio=8`, LLM.int8()-style decomposition; what `deploy_int8` does at run time). "
        f"{res['calib_images']} calibration images, everything else as above.",
        "",
        *table(head, body),
    ]
    if res.get("ablation"):
        out += [
            "",
            f"Where the W{OPTIONS_ABLATE_BITS}A{OPTIONS_ABLATE_BITS} loss remains with the outlier split "
            "(same per-family switching as the ablation above, on the `outlier_ratio=8` model):",
            "",
        ]
        out += render_ablation(res["ablation"])[2:]
    return out


def render_ablation(rows: list[dict]) -> list[str]:
    bits = sorted({r["bits"] for r in rows}, reverse=True)
    fams = list(dict.fromkeys(r["family"] for r in rows))
    by = {(r["family"], r["bits"]): r for r in rows}
    head = ["quantized family (all else float)", "quantizers"]
    head += [f"W{b}A{b} {k}" for b in bits for k in ("top-1 %", "Δ pt", "agree %")]
    body = []
    for f in fams:
        cells = [f, by[(f, bits[0])]["quantizers"]]
        for b in bits:
            r = by[(f, b)]
            cells += [pct(r["top1"]), pts(r["delta"]), pct(r["agree"])]
        body.append(cells)
    note = (
        "Ablation: which activation family costs the accuracy. `PTQConfig.targets`/`skip` select whole *modules* "
        "(a linear's weight and input quantizer together; `blocks.*.attn` holds q, k, softmax and v as one "
        "module), so one activation family alone cannot be expressed as a config: each row takes the calibrated "
        "RepQ model above and switches quantizers on by name with their public `Quantizer.enabled` flag (the one "
        "`set_quant_enabled` sets); the scales were therefore calibrated with every upstream quantizer active."
    )
    return [note, "", *table(head, body)]


# -- 3. deployment --------------------------------------------------------------------------------------------------
def part_deploy(ctx: Ctx) -> dict:
    n = ctx.calib().shape[0]
    fq = copy.deepcopy(ctx.model)
    vitkit.apply_(fq, PTQConfig(w_bits=8, a_bits=8, method="repq", calib_images=n), calib=ctx.calib())
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        calib = ctx.calib()
        variants = {
            "PyTorch fp32 eager": ctx.model,
            "ORT fp32": OrtModule(export_onnx(ctx.model, tmp / "fp32.onnx")),
            "vitkit deployed int8, ORT (RepQ W8A8 weights)": deploy_int8(fq, tmp / "int8", calib=calib),
            "same, without the outlier-channel split": deploy_int8(fq, tmp / "int8n", calib=calib, outliers=None),
            "vitkit deployed int8, torch.ao backend": deploy_int8(fq, tmp / "int8t", calib=calib, backend="torch"),
        }
        rows = []
        for name, mod in variants.items():
            row = {"name": name, **ctx.score(mod)}
            if isinstance(mod, OrtModule):
                row["mb"] = mod.file_bytes / 1e6
            rows.append(row)
            _log.info("deploy %s: top-1 %.4f", name, row["top1"])
        ips = ctx.speed(list(variants.values()))
    for row, v in zip(rows, ips, strict=True):
        row["ips"], row["speedup"] = v, v / ips[0]
    rows.insert(1, {"name": "fake-quant W8A8 RepQ (accuracy reference)", **ctx.score(fq)})
    rows.append(integer_row(ctx, fq))
    found = variants["vitkit deployed int8, ORT (RepQ W8A8 weights)"].outlier_channels
    return {"rows": rows, "calib_images": n, "outliers": ", ".join(f"{k} {v}" for k, v in found.items())}


def integer_row(ctx: Ctx, fq) -> dict:
    t0 = time.perf_counter()
    integer = to_integer(fq)
    row = {"name": "integer-only twin (`to_integer`, int64 emulation)", **ctx.score(integer)}
    row["eval_s"] = time.perf_counter() - t0
    fp, it = ctx.speed([ctx.model, integer], repeats=2)
    row["ips"], row["speedup"] = it, it / fp
    return row


def render_deploy(res: dict) -> list[str]:
    body = []
    for r in res["rows"]:
        target, ok = "", ""
        if r["name"].startswith("vitkit deployed int8, ORT"):
            target, ok = "≥ −1.0 pt and ≥ 1.8×", met(r["delta"] >= -0.01 and r["speedup"] >= 1.8)
        speed = [f"{r['ips']:.1f}", f"×{r['speedup']:.2f}"] if "ips" in r else ["–", "–"]
        mb = f"{r['mb']:.1f}" if "mb" in r else "–"
        body.append([r["name"], pct(r["top1"]), pts(r["delta"]), pct(r["agree"]), *speed, mb, target, ok])
    head = ["variant", "top-1 %", "Δ pt", "agree %", "bs16 img/s", "vs PyTorch fp32", "ONNX MB", "target", "met"]
    return [
        f"W8A8 RepQ-ViT calibrated on {res['calib_images']} images; `deploy_int8` strips the fake-quant modules, "
        "keeps the input channels whose calibrated max exceeds 8× the median channel's in float (LLM.int8()-style "
        "decomposition, `vitkit.quant.outliers`; found here: "
        f"{res.get('outliers') or 'not recorded'}) and deploys the reparameterized float weights with ONNX Runtime "
        "dynamic int8 (MatMul, per-channel, reduce_range) or torch.ao dynamic int8. The integer-only twin is timed "
        "in its own two-model interleave with fp32 (it emulates integer GEMMs with int64 torch ops: not a speed "
        "path).",
        "",
        *table(head, body),
    ]


# -- 4. structured pruning + KD recovery ----------------------------------------------------------------------------
PRUNE_RATIOS = (0.3, 0.5)
SALIENCIES = ("l1", "l2", "taylor", "hessian", "dimap")


def prune_row(ctx: Ctx, ratio: float, imp: str, reconstruct: bool = False) -> tuple[dict, torch.nn.Module]:
    """Prune a copy of the model; test top-1 / agreement and val top-1 (which picks the saliency to recover)."""
    m = copy.deepcopy(ctx.model)
    calib = ctx.split("calib")
    cfg = PruneConfig(target="macs", ratio=ratio, importance=imp, groups=("heads", "mlp"), calib_images=len(calib))
    cfg = dataclasses.replace(cfg, reconstruct=reconstruct)
    t0 = time.perf_counter()
    d = vitkit.apply_(m, cfg, calib=calib).steps[0].decisions
    label = f"{imp} + LS reconstruction" if reconstruct else imp
    row = {"ratio": ratio, "importance": label, "prune_s": time.perf_counter() - t0}
    row["macs"] = d["macs"]["after"] / d["macs"]["before"]
    row["params"] = d["params"]["after"] / d["params"]["before"]
    row["pruned"] = ctx.score(m)
    logits, labels = classify(m, ctx.split("val"))
    row["val_pruned"] = topk_accuracy(logits, labels)
    _log.info("prune %.0f%% %s: test %.4f, val %.4f", 100 * ratio, imp, row["pruned"]["top1"], row["val_pruned"])
    return row, m


def recover(ctx: Ctx, row: dict, m) -> None:
    kd = ctx.kd(m, ctx.args.epochs)
    row.update(kd_s=kd["seconds"], kd_images=kd["images_seen"], after=ctx.score(m))
    _log.info("prune %.0f%% %s: %.4f after KD", 100 * row["ratio"], row["importance"], row["after"]["top1"])


def part_prune(ctx: Ctx) -> dict:
    """Every saliency at every ratio without recovery; KD recovery (the costly part: ``--epochs`` over the train
    split) for the saliency with the best *val* top-1 at each ratio, or for all with ``--kd-all``."""
    saliencies = ctx.args.saliencies.split(",") if ctx.args.saliencies else SALIENCIES
    got = [prune_row(ctx, r, imp) for r in PRUNE_RATIOS for imp in saliencies]
    for ratio in PRUNE_RATIOS:
        at = [(row, m) for row, m in got if row["ratio"] == ratio]
        best = max(at, key=lambda g: g[0]["val_pruned"])
        for row, m in at if ctx.args.kd_all else [best]:
            recover(ctx, row, m)
        got.append(prune_row(ctx, ratio, best[0]["importance"], reconstruct=True))  # + least-squares refit
        recover(ctx, *got[-1])
    ips = ctx.speed([ctx.model, *(m for _, m in got)])
    for (row, _), v in zip(got, ips[1:], strict=True):
        row["speedup"] = v / ips[0]
    kd = {**KD, **KD_TRAIN, "lr": ctx.args.kd_lr}
    return {"rows": [r for r, _ in got], "epochs": ctx.args.epochs, "train": len(ctx.split("train")), "kd": kd}


def render_prune(res: dict) -> list[str]:
    body = []
    for r in res["rows"]:
        after = r.get("after")
        target, ok = "", ""
        if after and r["ratio"] == 0.3:
            target, ok = "≥ −3 pt after KD", met(after["delta"] >= -0.03)
        kd_cells = [pct(after["top1"]), pts(after["delta"]), pct(after["agree"])] if after else ["–"] * 3
        body.append(
            [
                f"−{r['ratio']:.0%}",
                r["importance"],
                f"{r['macs']:.3f}",
                f"{r['params']:.3f}",
                f"×{r['speedup']:.2f}",
                pct(r["pruned"]["top1"]),
                pts(r["pruned"]["delta"]),
                *kd_cells,
                f"{r['prune_s']:.1f}",
                f"{r['kd_s']:.0f}" if after else "–",
                target,
                ok,
            ]
        )
    head = ["MACs removed", "saliency", "MAC ratio", "params ratio", "bs16 throughput", "top-1 pruned %", "Δ pruned"]
    head += ["top-1 after KD %", "Δ after KD", "agree after %", "prune s", "KD s", "target", "met"]
    kd = ", ".join(f"{k}={v}" for k, v in res.get("kd", KD).items())
    return [
        "Heads + MLP neurons, global allocation; data-driven saliencies scored on the calib split (labels used). "
        "Every saliency is scored without recovery; KD recovery runs for the saliency with the best val top-1 "
        "(100 val images) at each ratio (all of them with `--kd-all`), and once more for that saliency with "
        "`PruneConfig(reconstruct=True)` (least-squares refit of each pruned block's `proj`/`fc2` to the dense "
        "block on the calib split, before KD). "
        f"Recovery: `distill` from the unpruned model on the train split ({res['train']} images), "
        f"{res['epochs']} epoch(s), {kd} (AdamW, warm-up then cosine).",
        "",
        *table(head, body),
    ]


# -- 5. early exit --------------------------------------------------------------------------------------------------
EXIT_BUDGETS = (0.5, 1.0, 2.0)


def exit_rows(ctx: Ctx, head: str) -> list[dict]:
    m = copy.deepcopy(ctx.model)
    d = vitkit.apply_(m, EarlyExitConfig(head=head, train=dict(epochs=0))).steps[0].decisions
    tr = train_exit_heads(
        m, ctx.split("train"), dataclasses.replace(EXIT_TRAIN, epochs=ctx.args.exit_epochs, shift=16.0, seed=0)
    )
    n_lat = 16 if ctx.quick else 200
    images = [x for x, _ in iterate_batches(ctx.split("test"), 1, limit=n_lat)]
    rows = []
    for mode in ("single", "per-exit"):
        for budget in EXIT_BUDGETS:
            cal = calibrate(m, ctx.split("val"), budget, per_exit=mode == "per-exit", cost="latency")
            ev = evaluate_exits(m, ctx.split("test"))
            reset_histogram(m)
            ms_full, ms_exit, ratio = latency_ratio(ctx.model, m, images, 2 if ctx.quick else 3)
            row = {"head": head, "mode": mode, "budget": budget, "exits": d["exits"], "head_params": d["head_params"]}
            row.update(train_s=tr["seconds"], thresholds=ev["thresholds"], active=ev["active"], hist=ev["histogram"])
            row.update(
                top1=ev["top1_exit"], full=ev["top1_full"], macs=ev["macs_ratio"], est=cal.get("latency_ratio_estimate")
            )
            row.update(ms_full=ms_full, ms_exit=ms_exit, latency=ratio, n_lat=len(images))
            rows.append(row)
            _log.info("early exit %s %s %.1f: top-1 %.4f, latency ×%.2f", head, mode, budget, row["top1"], ratio)
        reset_histogram(m)
    return rows


def part_early_exit(ctx: Ctx) -> dict:
    heads = ("linear",) if ctx.quick else ("linear", "attention-pool")
    rows = [r for h in heads for r in exit_rows(ctx, h)]
    return {"rows": rows, "epochs": ctx.args.exit_epochs, "fp32": ctx.fp32()}


def render_early_exit(res: dict) -> list[str]:
    fp = res["fp32"]["top1"]
    body = []
    for r in res["rows"]:
        tau = (
            f"{r['thresholds'][0]:.3f}"
            if r["mode"] == "single"
            else " / ".join(f"{t:.2f}" if a else "off" for t, a in zip(r["thresholds"], r["active"], strict=True))
        )
        hist = " / ".join(str(v) for v in r["hist"].values())
        body.append(
            [r["head"], r["mode"], f"{r['budget']:g}", tau, pct(r["top1"]), pts(r["top1"] - fp), hist]
            + [
                f"×{r['macs']:.2f}",
                f"×{r['est']:.2f}" if r["est"] else "–",
                f"{r['ms_full']:.1f}",
                f"{r['ms_exit']:.1f}",
            ]
            + [f"**×{r['latency']:.2f}**"]
        )
    r0 = res["rows"][0]
    head = ["heads", "calibration", "max drop on val (pt)", "τ", "test top-1 %", "Δ pt", "exit histogram (test)"]
    head += ["MAC ratio", "latency ratio est.", "ms full", "ms exit", "bs1 latency ratio"]
    exits = ", ".join(f"blocks.{b}" for b in r0["exits"])
    return [
        f"Exit heads after {exits} (+ the final head), trained by soft KD from the final head (backbone frozen) on "
        f"the train split, {res['epochs']} epoch(s), ±16 px shifts; thresholds calibrated on the val split for the "
        "budget (*single*: LGViT's one τ; *per-exit*: vitkit's cost-aware τ per exit with measured batch-1 part "
        f"latencies); accuracy on the test split. Latency: batch 1, {r0['n_lat']} test images each alone, full and "
        "early-exit model interleaved image by image, median of repeats, mean over images.",
        "",
        *table(head, body),
    ]


# -- 6. composition -------------------------------------------------------------------------------------------------
COMPOSE_PRUNE = dict(target="macs", importance="taylor", groups=("heads", "mlp"))
COMPOSE_TOME = (8, 13)


def part_compose(ctx: Ctx) -> dict:
    """Prune → KD → W8A8 RepQ step by step, then every deployed combination (with / without prune and ToMe)."""
    calib, steps, ratio = ctx.split("calib"), [], ctx.args.compose_prune
    m = copy.deepcopy(ctx.model)
    ptq = PTQConfig(w_bits=8, a_bits=8, method="repq", calib_images=len(calib))

    def step(name: str, fn) -> None:
        t0 = time.perf_counter()
        fn()
        steps.append({"name": name, "seconds": time.perf_counter() - t0, "gmacs": macs(m) / 1e9, **ctx.score(m)})
        _log.info("compose %s: top-1 %.4f", name, steps[-1]["top1"])

    steps.append({"name": "original", "seconds": 0.0, "gmacs": macs(m) / 1e9, **ctx.score(m)})
    prune = PruneConfig(**COMPOSE_PRUNE, ratio=ratio, calib_images=len(calib))
    step(f"prune −{ratio:.0%} MACs (taylor)", lambda: vitkit.apply_(m, prune, calib=calib))
    step(f"KD recovery ({ctx.args.epochs} ep)", lambda: ctx.kd(m, ctx.args.epochs))
    pruned_fp32 = copy.deepcopy(m)
    step("W8A8 RepQ (fake-quant)", lambda: vitkit.apply_(m, ptq, calib=calib.images))
    plain = copy.deepcopy(ctx.model)
    vitkit.apply_(plain, ptq, calib=calib.images)
    quantized = {"W8A8 RepQ": plain, f"prune {ratio:.0%} + KD + W8A8 RepQ": m}
    return {"steps": steps, "ratio": ratio, **compose_deployed(ctx, quantized, pruned_fp32)}


def compose_deployed(ctx: Ctx, quantized: dict, pruned_fp32) -> dict:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        variants = {
            "PyTorch fp32 eager (original)": ctx.model,
            "ORT fp32 (original)": OrtModule(export_onnx(ctx.model, tmp / "fp32.onnx")),
            "PyTorch fp32, pruned + KD": pruned_fp32,
        }
        for i, (label, fq) in enumerate(quantized.items()):
            variants[f"ORT int8: {label}"] = deploy_int8(fq, tmp / f"int8_{i}", calib=ctx.calib())
            for r in COMPOSE_TOME:
                with_tome = copy.deepcopy(fq)
                vitkit.apply_(with_tome, ToMeConfig(r=r))
                path = tmp / f"int8_{i}_tome{r}"
                variants[f"ORT int8: {label} + ToMe r={r}"] = deploy_int8(with_tome, path, calib=ctx.calib())
        rows = [{"name": n, **ctx.score(mod)} for n, mod in variants.items()]
        ips = ctx.speed(list(variants.values()))
    for row, v in zip(rows, ips, strict=True):
        row["ips"], row["speedup"] = v, v / ips[0]
    return {"deployed": rows}


def render_compose(res: dict) -> list[str]:
    steps = [
        [s["name"], pct(s["top1"]), pts(s["delta"]), pct(s["agree"]), f"{s['gmacs']:.3f}", f"{s['seconds']:.0f}"]
        for s in res["steps"]
    ]
    body = []
    for r in res["deployed"]:
        target, ok = "", ""
        if r["name"].startswith("ORT int8"):
            target, ok = "≥ 3× at ≥ −2 pt", met(r["speedup"] >= 3.0 and r["delta"] >= -0.02)
        body.append([r["name"], pct(r["top1"]), pts(r["delta"]), pct(r["agree"]), f"{r['ips']:.1f}"])
        body[-1] += [f"**×{r['speedup']:.2f}**", target, ok]
    return [
        f"Prune {res.get('ratio', 0.3):.0%} of MACs ({COMPOSE_PRUNE['importance']}, heads + MLP) → KD as in the "
        "prune table → W8A8 RepQ-ViT (fake-quant, calib split) → `deploy_int8` (ONNX Runtime dynamic int8); ToMe "
        "added after quantization (runtime step) and exported with the model. Step by step (PyTorch):",
        "",
        *table(["after step", "top-1 %", "Δ pt", "agree %", "GMACs/img", "step s"], steps),
        "",
        "Deployed, batch 16, interleaved with PyTorch fp32 eager of the original:",
        "",
        *table(["variant", "top-1 %", "Δ pt", "agree %", "img/s", "vs PyTorch fp32", "target", "met"], body),
        "",
        compose_verdict(res["deployed"]),
    ]


def compose_verdict(rows: list[dict]) -> str:
    ok = [r for r in rows if r["name"].startswith("ORT int8") and r["speedup"] >= 3.0 and r["delta"] >= -0.02]
    if not ok:
        return "Target ≥ 3× at ≤ 2 pt: **not met** by any deployed combination."
    best = max(ok, key=lambda r: r["speedup"])
    speed, drop = f"×{best['speedup']:.2f}", pts(best["delta"])
    return f"Target ≥ 3× at ≤ 2 pt: **met** — fastest qualifying: {best['name']} ({speed}, {drop} pt)."


# -- 7. LoRA / HiRA vs full fine-tuning ------------------------------------------------------------------------------
def lora_rank(model, budget: float = 0.05) -> tuple[int, int]:
    """The largest LoRA rank whose trainable parameters (factors + new head) stay inside ``budget`` of the model."""
    total = sum(p.numel() for p in fresh_task_model(model, 0).parameters())
    for r in range(32, 0, -1):
        m = fresh_task_model(model, 0)
        vitkit.apply_(m, vitkit.LoRAConfig(rank=r, alpha=2 * r))
        if sum(p.numel() for p in m.parameters() if p.requires_grad) <= budget * total:
            return r, total
    raise RuntimeError("no LoRA rank fits the budget")


def lora_variants(rank: int) -> dict:
    """key → (row name, (adaptation, lr, SlimFit)) as in benchmarks/adapt.py (full FT is judged at its best lr)."""
    lo = vitkit.LoRAConfig
    return {
        "head": ("head only (linear probe)", ("head", 3e-3, None)),
        "full1e-4": ("full fine-tune (lr 1e-4)", ("full", 1e-4, None)),
        "full3e-4": ("full fine-tune (lr 3e-4)", ("full", 3e-4, None)),
        "lora": (f"LoRA r={rank}", (lo(rank=rank, alpha=2 * rank), 2e-3, None)),
        "hira": (f"HiRA r={rank} (ΔW = W0 ⊙ BA)", (lo(rank=rank, alpha=2 * rank, variant="hira"), 2e-2, None)),
    }


def part_lora(ctx: Ctx) -> dict:
    rank, total = lora_rank(ctx.model)
    data = {s: load_dataset("digits", s, model=ctx.model) for s in ("train", "val", "test")}
    if ctx.quick:
        data = {s: TensorImageDataset(d.images[:48], d.labels[:48], d.spec, name=s) for s, d in data.items()}
    rows = []
    chosen = ctx.args.lora_variants.split(",")
    for key, (name, spec) in lora_variants(rank).items():
        if key not in chosen:
            continue
        rows.append(run_variant(ctx.model, name, spec, data, ctx.args.ft_epochs, 0, None))
        _log.info("lora %s: test %.4f (%.0f s)", name, rows[-1]["test"], rows[-1]["seconds"])
    sizes = {s: len(d) for s, d in data.items()}
    return {"rows": rows, "rank": rank, "total": total, "epochs": ctx.args.ft_epochs, "sizes": sizes}


def render_lora(res: dict) -> list[str]:
    full = max((r for r in res["rows"] if r["name"].startswith("full")), key=lambda r: r["val"])
    body = []
    for r in res["rows"]:
        share = r["trainable"] / res["total"]
        target, ok = "", ""
        if r["name"].startswith(("LoRA", "HiRA")):
            target, ok = "≥ full FT − 1 pt, ≤ 5 % params", met(r["test"] >= full["test"] - 0.01 and share <= 0.05)
        body.append([r["name"], pct(r["test"]), pct(r["val"]), pts(r["test"] - full["test"]), f"{r['trainable']:,}"])
        body[-1] += [f"{100 * share:.2f}", f"{r['seconds']:.0f}", target, ok]
    s = res["sizes"]
    return [
        f"scikit-learn digits ({s['train']} train / {s['val']} val / {s['test']} test), 8×8 upsampled to 224² "
        f"(grey → RGB), a fresh 10-way head for every row; {res['epochs']} epochs, batch 32, AdamW, warm-up then "
        "cosine, ±2 px (base pixels) shifts, label smoothing 0.1 (`benchmarks/adapt.py`'s `run_variant`). LoRA "
        f"rank {res['rank']} = the largest inside 5 % of the {res['total']:,} parameters, on qkv/proj/fc1/fc2, "
        "folded back before testing. Full FT reference: the full-FT lr with the best val top-1 "
        f"(**{full['name']}**).",
        "",
        *table(
            ["variant", "test top-1 %", "val top-1 %", "Δ vs full FT", "trainable", "% params", "train s"]
            + ["target", "met"],
            body,
        ),
    ]


# -- results file and section ---------------------------------------------------------------------------------------
RUN = {
    "tokens": part_tokens,
    "ptq": part_ptq,
    "ptq_options": part_ptq_options,
    "deploy": part_deploy,
    "prune": part_prune,
    "early_exit": part_early_exit,
    "compose": part_compose,
    "lora": part_lora,
}
RENDER = {
    "tokens": ("Token reduction at matched MACs", render_tokens),
    "ptq": ("Post-training quantization", render_ptq),
    "ptq_options": ("PTQ options for the post-GELU outliers", render_ptq_options),
    "deploy": ("Int8 deployment", render_deploy),
    "prune": ("Structured pruning + KD recovery", render_prune),
    "early_exit": ("Early exit (LGViT)", render_early_exit),
    "compose": ("Composed recipe, deployed", render_compose),
    "lora": ("LoRA / HiRA vs full fine-tuning (digits)", render_lora),
}


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def store(part: str, res: dict) -> dict:
    results = load_results()
    results[part] = res
    atomic_write_text(RESULTS, json.dumps(results, indent=1) + "\n")
    return results


def run_part(ctx: Ctx, part: str) -> dict:
    _log.info("part %s: start", part)
    ctx.used = set()
    t0 = time.perf_counter()
    load = os.getloadavg()[0]
    res = RUN[part](ctx)
    env = environment()
    meta = {
        "quick": ctx.quick,
        "seconds": time.perf_counter() - t0,
        "load": load,
        "env": env,
        "split": ctx.rule,
        "sizes": {k: ctx.sizes[k] for k in QUICK_N if k in ctx.used},
    }
    if part != "lora":
        meta["fp32"] = ctx.fp32()
    _log.info("part %s: done in %.0f s", part, meta["seconds"])
    return store(part, {**res, "meta": meta})


def section(results: dict) -> str:
    parts = [p for p in PARTS if p in results]
    quick = any(results[p]["meta"]["quick"] for p in parts)
    latest = max((results[p]["meta"] for p in parts), key=lambda m: m["env"]["date"])
    lines = [
        "## Real pretrained ViT-Ti on real ImageNet images (`benchmarks/real.py`)" + (" (quick)" if quick else ""),
        "",
        env_lines(latest["env"]),
        "",
        f"Model `{ARCH}.augreg_in21k_ft_in1k` (5.72M parameters; eval transform of its pretrained cfg: mean = std = "
        "0.5, crop_pct 0.9, bicubic). Data: the 1,000-image ImageNet sample, one image per class, split by "
        f"`imagefolder:DIR?classes=imagenet&split={SPLIT}&seed=0` into disjoint parts: calib 100 (PTQ calibration "
        "on its first 32, pruning saliency), train 300 (KD recovery, exit heads; augmented), val 100 (early-exit "
        "thresholds), test 500 (every row). One image per class: absolute top-1 is optimistic, drops and agreement "
        "are informative. Speed: batch 16 of real test images, fp32 PyTorch eager baseline in the same process, "
        "interleaved, median of repeats, torch default threading at 2 threads. Parts run separately; each says when "
        "and how long.",
    ]
    for p in parts:
        lines += ["", *part_header(p, results[p]), "", *RENDER[p][1](results[p])]
    return "\n".join(lines)


def part_header(part: str, res: dict) -> list[str]:
    m = res["meta"]
    fp = m.get("fp32")
    base = f" fp32 top-1 **{pct(fp['top1'])} %** on {fp['images']} test images." if fp else ""
    used = ", ".join(f"{k} {v}" for k, v in m.get("sizes", {}).items())
    return [
        f"### {RENDER[part][0]} (`--part {part}`{' --quick' if m['quick'] else ''})",
        "",
        f"Run {m['env']['date']}, {m['seconds'] / 60:.1f} min, load average {m['load']:.1f} at start, GEMM probe "
        f"{m['env'].get('gemm_gflops', '?')} GFLOP/s.{base}" + (f" Images used: {used}." if used else ""),
    ]


def missing_inputs(args) -> str | None:
    if not Path(args.weights).is_file():
        return f"missing weights {args.weights}: pass --weights PATH (vit_tiny_patch16_224 .safetensors)"
    if not Path(args.data).is_dir():
        return f"missing ImageNet sample folder {args.data}: pass --data DIR (<wnid>/<file>.JPEG)"
    return None


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="all", help=f"all or a comma list of {', '.join(PARTS)}")
    ap.add_argument("--quick", action="store_true", help="smoke run: 32 test / 16 calib / 32 train images, 1 epoch")
    ap.add_argument("--epochs", type=int, default=None, help="KD recovery epochs for prune/compose (default 5)")
    ap.add_argument("--kd-lr", type=float, default=KD_TRAIN["lr"], help="KD recovery learning rate (AdamW)")
    ap.add_argument("--compose-prune", type=float, default=0.1, help="compose: fraction of MACs pruned (default 0.1)")
    ap.add_argument("--exit-epochs", type=int, default=None, help="exit-head training epochs (default 10)")
    ap.add_argument("--ft-epochs", type=int, default=None, help="digits fine-tuning epochs for lora (default 5)")
    ap.add_argument(
        "--lora-variants", default="head,full1e-4,full3e-4,lora,hira", help="lora part: comma list of variant keys"
    )
    ap.add_argument("--kd-all", action="store_true", help="prune part: KD recovery for every saliency, not the best")
    ap.add_argument("--saliencies", default=None, help=f"prune part: comma list from {','.join(SALIENCIES)}")
    ap.add_argument("--calib-images", type=int, default=32, help="calibration images taken from the calib split")
    ap.add_argument("--recon-iters", type=int, default=None, help="APHQ reconstruction steps per block (default 20)")
    ap.add_argument("--weights", default=str(WEIGHTS))
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--render-only", action="store_true", help="rebuild the section from the stored results")
    args = ap.parse_args(argv)
    q = args.quick
    for name, full, quick in (("epochs", 5, 1), ("exit_epochs", 10, 1), ("ft_epochs", 5, 1), ("recon_iters", 20, 2)):
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    parts = PARTS if args.part == "all" else tuple(p.strip() for p in args.part.split(","))
    bad = [p for p in parts if p not in PARTS]
    if bad:
        ap.error(f"unknown part(s) {bad}; valid: all, {', '.join(PARTS)}")
    args.parts = parts
    return args


def main(argv=None) -> int:
    args, failed = parse_args(argv), []
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore")  # tracer warnings of the ONNX exports
    if not args.render_only:
        problem = missing_inputs(args)
        if problem:
            print(problem, file=sys.stderr)
            return 2
        torch.set_num_threads(2)
        ctx = Ctx(args)
        for part in args.parts:
            try:
                run_part(ctx, part)
            except Exception:  # a long run keeps going: the other parts are still measured and written
                _log.exception("part %s failed; its stored results (if any) are unchanged", part)
                failed.append(part)
    results = load_results()
    if not results:
        print(f"no stored results in {RESULTS}: run a part first", file=sys.stderr)
        return 2
    write_section("real", section(results), OUT)
    _log.info("wrote the real section of %s%s", OUT, f" (failed parts: {failed})" if failed else "")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
