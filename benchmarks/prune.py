"""Structured pruning + KD recovery benchmark → the "prune" section of BENCHMARKS.md.

Usage: .venv/bin/python benchmarks/prune.py [--quick] [--part all|speed|accuracy]
(``--part accuracy`` reruns only the reference-model sections and keeps the deit_small speed rows already in
BENCHMARKS.md: accuracy is valid on a busy CPU, timing is not.)

1. deit_small (random init, 224², bs16): throughput ratio, params and MACs after pruning heads+MLP to
   25/50/60% fewer MACs (l1 scores: speed depends only on the shapes), interleaved with the dense model.
2. Reference model (vitkit_mnist_tiny on mnist5k): test top-1 right after pruning 50% of MACs and after a
   short soft-KD recovery from the unpruned model, for l1 / taylor / hessian / dimap; then recovery time with a
   live teacher vs with the TinyViT logit cache.
3. Reference model: the recovery setting that brings 50% MACs back within 1 pt of the dense model
   (:data:`RECOVERY`, the same as ``recipes/prune_distill_reference.yaml``), with its cost in images and seconds.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vitkit  # noqa: E402
from vitkit.bench.env import environment  # noqa: E402
from vitkit.bench.flops import count_macs  # noqa: E402
from vitkit.bench.record import env_lines, write_section  # noqa: E402
from vitkit.bench.timing import interleaved_times  # noqa: E402
from vitkit.data import calibration_set, load_dataset  # noqa: E402
from vitkit.distill import DistillConfig, distill  # noqa: E402
from vitkit.prune import PruneConfig  # noqa: E402
from vitkit.training import evaluate_top1  # noqa: E402

#: The working recovery setting (also ``recipes/prune_distill_reference.yaml``): prune 50% of MACs with
#: first-order Taylor scores (32 of 64 labelled calibration images), then KD from the unpruned model with the labels
#: mixed in (alpha 0.5: the teacher is itself only 97.5% right on the training images).
RECOVERY_PRUNE = dict(target="macs", ratio=0.5, importance="taylor", groups=("heads", "mlp"), calib_images=32)
RECOVERY_KD = dict(epochs=16, batch_size=32, lr=1e-3, warmup_epochs=0.5, loss="soft", alpha=0.5, temperature=1.0)


def speed_table(repeats: int) -> list[str]:
    dense = vitkit.load("deit_small_patch16_224")
    x = torch.randn(16, 3, 224, 224)
    one = x[:1]
    variants = [("dense", dense)]
    for r in (0.25, 0.5, 0.6):
        m = copy.deepcopy(dense)
        vitkit.apply_(m, PruneConfig(ratio=r, importance="l1", groups=("heads", "mlp")))
        variants.append((f"-{r:.0%} MACs (heads+mlp, global l1)", m))
    m = copy.deepcopy(dense)
    vitkit.apply_(m, PruneConfig(ratio=0.5, importance="l1", groups=("heads", "mlp"), allocation="uniform"))
    variants.append(("-50% MACs (heads+mlp, uniform l1)", m))
    times = interleaved_times([v for _, v in variants], x, repeats=repeats)
    base = statistics.median(times[0])
    base_macs = count_macs(dense, one)
    rows = [
        "| variant | heads/block | MLP hidden/block | params (M) | GMACs/img | img/s bs16 | speed-up | MAC ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (name, m), t in zip(variants, times, strict=True):
        s = vitkit.prune.structure(m)
        heads = sorted({v["num_heads"] for v in s.values()})
        hidden = [v["mlp_hidden"] for v in s.values()]
        macs = count_macs(m, one)
        med = statistics.median(t)
        rows.append(
            f"| {name} | {heads[0]}–{heads[-1]} | {min(hidden)}–{max(hidden)} | "
            f"{sum(p.numel() for p in m.parameters()) / 1e6:.2f} | {macs / 1e9:.3f} | {16 / med:.1f} | "
            f"**{base / med:.2f}×** | {base_macs / macs:.2f} |"
        )
    return rows


def recovery_table(limit: int, epochs: int, calib_n: int) -> list[str]:
    from vitkit.demo import reference_artifact

    ref = vitkit.load(reference_artifact())
    train = load_dataset("mnist5k", "train", model=ref)
    test = load_dataset("mnist5k", "test", model=ref)
    calib = calibration_set(train, calib_n, seed=0)
    base = evaluate_top1(ref, test)
    kd = DistillConfig(limit=limit, loss="soft", temperature=1.0, train=dict(epochs=epochs, batch_size=32, lr=5e-4))
    rows = [
        f"Reference model dense test top-1: **{100 * base:.2f}%** (500 test images). Pruning: 50% of MACs, "
        f"heads+MLP, global allocation, taylor/hessian scored on 32 images (calib_images default) "
        f"of a {calib_n}-image calibration set. Recovery: soft KD "
        f"(τ=1) from the unpruned model, {epochs} epoch(s) × {limit} training images, batch 32, AdamW lr 5e-4.",
        "",
        "| importance | MACs ratio | params ratio | top-1 pruned | top-1 after KD | Δ vs dense | prune s | KD s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for imp in ("l1", "taylor", "hessian", "dimap"):
        m = copy.deepcopy(ref)
        t0 = time.perf_counter()
        rep = vitkit.apply_(m, PruneConfig(ratio=0.5, importance=imp, groups=("heads", "mlp")), calib=calib)
        t_prune = time.perf_counter() - t0
        dec = rep.steps[0].decisions
        pruned = evaluate_top1(m, test)
        out = distill(m, ref, train, kd)
        after = evaluate_top1(m, test)
        rows.append(
            f"| {imp} | {dec['macs']['after'] / dec['macs']['before']:.3f} | "
            f"{dec['params']['after'] / dec['params']['before']:.3f} | {100 * pruned:.2f}% | **{100 * after:.2f}%** | "
            f"{100 * (after - base):+.2f} | {t_prune:.1f} | {out['seconds']:.0f} |"
        )
    # cached-logit recovery vs live teacher (same pruned start, hessian)
    start = copy.deepcopy(ref)
    vitkit.apply_(start, PruneConfig(ratio=0.5, importance="hessian"), calib=calib)
    live = copy.deepcopy(start)
    t_live = distill(live, ref, train, kd)["seconds"]
    with tempfile.TemporaryDirectory() as tmp:
        cached_cfg = kd.replace(cache_dir=tmp, topk=10)
        first = copy.deepcopy(start)
        o1 = distill(first, ref, train, cached_cfg)
        again = copy.deepcopy(start)
        o2 = distill(again, None, train, cached_cfg)
    rows += [
        "",
        "| recovery (hessian start) | teacher pass s | student training s | total s | top-1 after |",
        "|---|---|---|---|---|",
        f"| live teacher | – | {t_live:.1f} | {t_live:.1f} | {100 * evaluate_top1(live, test):.2f}% |",
        f"| cache, first run (builds it) | {o1['cache_seconds']:.1f} | {o1['seconds']:.1f} | "
        f"{o1['cache_seconds'] + o1['seconds']:.1f} | {100 * evaluate_top1(first, test):.2f}% |",
        f"| cache, repeated run (no teacher) | 0 | {o2['seconds']:.1f} | {o2['seconds']:.1f} | "
        f"{100 * evaluate_top1(again, test):.2f}% |",
    ]
    return rows


def target_table(quick: bool) -> list[str]:
    """Prune with :data:`RECOVERY_PRUNE`, recover with :data:`RECOVERY_KD`; report accuracy and cost."""
    from vitkit.demo import reference_artifact

    ref = vitkit.load(reference_artifact())
    train = load_dataset("mnist5k", "train", model=ref)
    test = load_dataset("mnist5k", "test", model=ref)
    calib = calibration_set(train, 64, seed=0)  # the recipe's calib set; the prune step uses the first 32
    base = evaluate_top1(ref, test)
    kd_kw = dict(RECOVERY_KD, epochs=1, limit=512) if quick else dict(RECOVERY_KD)
    m = copy.deepcopy(ref)
    t0 = time.perf_counter()
    rep = vitkit.apply_(m, PruneConfig(**RECOVERY_PRUNE), calib=calib)
    t_prune = time.perf_counter() - t0
    dec = rep.steps[0].decisions
    pruned = evaluate_top1(m, test)
    train_keys = {k: v for k, v in kd_kw.items() if k in ("epochs", "batch_size", "lr", "warmup_epochs")}
    kd_cfg = DistillConfig(**{k: v for k, v in kd_kw.items() if k not in train_keys}, train=train_keys)
    out = distill(m, ref, train, kd_cfg)
    after = evaluate_top1(m, test)
    ok = "yes" if base - after <= 0.01 else "**no**"
    kd_desc = ", ".join(f"{k}={v}" for k, v in kd_kw.items())
    rows = [
        f"Prune: {', '.join(f'{k}={v}' for k, v in RECOVERY_PRUNE.items())}. KD from the unpruned model: {kd_desc} "
        "(AdamW, warm-up then cosine, shift-2 augmentation). Same setting as `recipes/prune_distill_reference.yaml`.",
        "",
        "| MACs ratio | params ratio | top-1 dense | top-1 pruned | top-1 after KD | Δ | within 1 pt | "
        "KD images | KD steps | prune s | KD s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    macs, params = (dec[k]["after"] / dec[k]["before"] for k in ("macs", "params"))
    return rows + [
        f"| {macs:.3f} | {params:.3f} | {100 * base:.2f}% | {100 * pruned:.2f}% | **{100 * after:.2f}%** | "
        f"{100 * (after - base):+.2f} | {ok} | "
        f"{out['images_seen']} | {out['steps']} | {t_prune:.1f} | {out['seconds']:.0f} |",
    ]


def _kept_speed_rows(path: str) -> list[str]:
    """The deit_small speed subsection already in BENCHMARKS.md (kept verbatim by ``--part accuracy``)."""
    p = Path(path)
    text = p.read_text() if p.exists() else ""
    if "<!-- BEGIN prune -->" in text:  # search inside the prune section only (other sections have deit_small rows)
        text = text.split("<!-- BEGIN prune -->", 1)[1].split("<!-- END prune -->", 1)[0]
    begin, end = "### deit_small", "### Reference model"
    if begin not in text or end not in text:
        return ["(no earlier speed rows recorded: run `benchmarks/prune.py --part speed` on a quiet machine)", ""]
    body = text.split(begin, 1)[1].split(end, 1)[0]
    return [begin + body.rstrip(), ""]


def _kept_until(path: str, marker: str) -> list[str]:
    """The current prune section of BENCHMARKS.md up to ``marker`` (``--part target`` keeps it)."""
    p = Path(path)
    text = p.read_text() if p.exists() else ""
    begin, end = "<!-- BEGIN prune -->", "<!-- END prune -->"
    if begin not in text:
        return ["## Structured pruning + KD recovery", ""]
    body = text.split(begin, 1)[1].split(end, 1)[0].split(marker, 1)[0]
    return [body.strip(), ""]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats and recovery images (smoke run)")
    ap.add_argument("--out", default="BENCHMARKS.md")
    ap.add_argument(
        "--part",
        choices=("all", "speed", "accuracy", "target"),
        default="all",
        help="speed: deit_small rows; accuracy: reference-model tables; target: only the recovery-to-target table",
    )
    ap.add_argument("--contended", action="store_true", help="label the seconds columns as measured on a busy CPU")
    args = ap.parse_args()
    torch.set_num_threads(2)
    repeats = 3 if args.quick else 7
    limit, epochs = (512, 1) if args.quick else (4000, 2)
    lines = ["## Structured pruning + KD recovery", "", env_lines(environment()), ""]
    if args.part == "target":  # keep everything else of the section, refresh the last table only
        kept = _kept_until(args.out, "### Reference model: recovery within 1 pt")
        lines = kept + ["### Reference model: recovery within 1 pt of the dense model at 50% MACs", ""]
        if args.contended:
            lines += ["Seconds: **contended (rerun quietly)**, measured while other jobs used the CPU.", ""]
        lines += target_table(args.quick)
        write_section("prune", "\n".join(lines), args.out)
        print("\n".join(lines))
        return
    if args.part == "accuracy":
        lines += ["Speed rows below: kept from the earlier quiet run (this run measured accuracy only).", ""]
        lines += _kept_speed_rows(args.out)
    else:
        lines += ["### deit_small, random init, 224², batch 16, fp32 eager, interleaved medians", ""]
        lines += speed_table(repeats)
        lines += ["", f"Median of {repeats} interleaved runs per variant; MACs counted with attention analytic.", ""]
    if args.part == "speed":
        lines += ["### Reference model", "", "(accuracy part not run: `benchmarks/prune.py --part accuracy`)"]
        write_section("prune", "\n".join(lines), args.out)
        print("\n".join(lines))
        return
    lines += ["### Reference model: accuracy after pruning and after KD recovery", ""]
    if args.contended:
        lines += ["Seconds in these tables: **contended (rerun quietly)**, measured while other jobs used the CPU.", ""]
    lines += recovery_table(limit, epochs, 64)
    lines += ["", "### Reference model: recovery within 1 pt of the dense model at 50% MACs", ""]
    lines += target_table(args.quick)
    write_section("prune", "\n".join(lines), args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
