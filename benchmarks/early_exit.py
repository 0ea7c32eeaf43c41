"""Early exit (LGViT) on the reference model → the "early_exit" section of BENCHMARKS.md.

Usage: .venv/bin/python benchmarks/early_exit.py [--quick]

1. Exit heads (attention-pool and linear, each set trained separately) after blocks 1-4 of the 6-block
   reference model (vitkit_mnist_tiny on mnist5k), trained by soft KD from the final head, backbone frozen.
2. Calibrated on the 500 validation images for a top-1 drop ≤ 0.5 / 1 / 2 points, twice: LGViT's single
   threshold, and vitkit's cost-aware per-exit thresholds (measured latencies); test top-1 (500 test
   images) with and without exiting, exit histogram, analytic MACs ratio.
   These columns do not depend on timing and are valid on a busy machine.
3. Mean batch-1 latency over test images (each image alone, so each takes its own exit), the full model
   and the early-exit model interleaved image by image, median of repeats per image. Valid only on a quiet
   machine: the section says whether the 1-minute load average was above half the cores.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vitkit  # noqa: E402
from vitkit.bench.env import environment  # noqa: E402
from vitkit.bench.record import env_lines, write_section  # noqa: E402
from vitkit.data import iterate_batches, load_dataset  # noqa: E402
from vitkit.early_exit import EarlyExitConfig, calibrate, evaluate_exits, reset_histogram  # noqa: E402

EXITS = [1, 2, 3, 4]
BUDGETS = (0.5, 1.0, 2.0)


def latency_ratio(base, ee, images: list[torch.Tensor], repeats: int) -> tuple[float, float, float]:
    """(mean ms full, mean ms early exit, ratio): every image alone, the two models interleaved."""
    times = {id(base): [[] for _ in images], id(ee): [[] for _ in images]}
    with torch.inference_mode():
        for m in (base, ee):  # warm-up
            for x in images[:10]:
                m(x)
        for _ in range(repeats):
            for i, x in enumerate(images):
                for m in (base, ee):
                    t0 = time.perf_counter()
                    m(x)
                    times[id(m)][i].append(time.perf_counter() - t0)
    full = sum(statistics.median(t) for t in times[id(base)]) / len(images)
    fast = sum(statistics.median(t) for t in times[id(ee)]) / len(images)
    return 1e3 * full, 1e3 * fast, full / fast


def run_heads(head: str, args, ref, val, test, images, threads, label, contended) -> tuple[list[str], str, dict]:
    """Train one set of exit heads, then one row per (calibration, budget)."""
    epochs, limit, repeats = (1, 1000, 3) if args.quick else (args.epochs, None, 5)
    model = copy.deepcopy(ref)
    cfg = EarlyExitConfig(exits=EXITS, head=head, limit=limit, threshold=0.9, train=dict(epochs=epochs))
    t0 = time.perf_counter()
    rep = vitkit.apply_(model, cfg)
    train_s = time.perf_counter() - t0
    dec = rep.steps[0].decisions
    rows = []
    per_exit = None
    for mode in ("single", "per-exit"):
        for budget in BUDGETS:
            cal = calibrate(model, val, budget, per_exit=mode == "per-exit", cost="latency")
            ev = evaluate_exits(model, test)
            reset_histogram(model)
            per_exit = ev["per_exit_top1"]
            hist = " / ".join(str(v) for v in ev["histogram"].values())
            thr = ev["thresholds"]
            tau = (
                f"{thr[0]:.4f}"
                if mode == "single"
                else " / ".join(f"{t:.3f}" if on else "off" for t, on in zip(thr, ev["active"], strict=True))
            )
            if args.accuracy_only:
                timing = "not measured | not measured | rerun quietly"
            else:
                ms_full, ms_exit, ratio = latency_ratio(ref, model, images, repeats)
                timing = f"{ms_full:.3f} | {ms_exit:.3f} | **{ratio:.2f}×** ({label.split(' (')[0]})"
            rows.append(
                f"| {head} | {mode} | {budget:g} | {tau} | {100 * ev['top1_exit']:.2f}% | "
                f"{-ev['drop_pts']:+.2f} | {hist} | {ev['macs_ratio']:.2f}× | {cal['latency_ratio_estimate']:.2f}× | "
                f"{timing} |"
            )
    names = [f"blocks.{b}" for b in EXITS] + ["final"]
    heads_line = (
        f"- **{head}** heads ({dec['head_params']} parameters, {epochs} epoch(s)"
        f"{'' if limit is None else f' × {limit} images'}, {train_s:.0f} s on a {'busy' if contended else 'quiet'} "
        "machine); test top-1 of each head alone: "
        + ", ".join(f"{n} {100 * a:.1f}%" for n, a in zip(names, per_exit, strict=True))
    )
    return rows, heads_line, ev


def main() -> None:
    from vitkit.demo import reference_artifact

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1 epoch on 1000 images, 50 latency images (smoke run)")
    ap.add_argument("--heads", default="attention-pool,linear", help="exit heads to compare, comma-separated")
    ap.add_argument("--epochs", type=int, default=20, help="KD epochs for the exit heads")
    ap.add_argument("--accuracy-only", action="store_true", help="skip latency (for a busy machine)")
    ap.add_argument("--out", default="BENCHMARKS.md")
    args = ap.parse_args()
    threads = 2
    torch.set_num_threads(threads)
    n_lat, repeats = (50, 3) if args.quick else (500, 5)
    ref = vitkit.load(reference_artifact())
    val = load_dataset("mnist5k", "val", model=ref)
    test = load_dataset("mnist5k", "test", model=ref)
    images = [x for x, _ in iterate_batches(test, 1, limit=n_lat)]
    load = os.getloadavg()[0]
    contended = load > 0.5 * (os.cpu_count() or 1)
    label = f"contended (load {load:.1f} on {os.cpu_count()} cores): rerun quietly" if contended else "quiet"
    rows = [
        "| heads | calibration | max drop (val) | τ | test top-1 exit | Δ pts | exit histogram (test) "
        "| MACs ratio | latency ratio, estimated | ms full | ms exit | latency ratio, measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    head_lines = []
    for head in args.heads.split(","):
        r, line, ev = run_heads(head, args, ref, val, test, images, threads, label, contended)
        rows += r
        head_lines.append(line)
    lines = ["## Early exit (LGViT) on the reference model", "", env_lines(environment()), ""]
    lines += [
        f"Reference model (6 blocks, test top-1 {100 * ev['top1_full']:.2f}%) with exit heads after blocks {EXITS}, "
        "trained by soft KD (α=0.5 with labels) from the final head, backbone frozen. Criterion: confidence. "
        "Calibrated on 500 validation images for the budget; accuracy on 500 test images. *single*: LGViT's one "
        "τ for all exits (the lowest whose val drop fits). *per-exit*: vitkit's cost-aware calibration — one τ "
        "per exit and exits switched off where they do not pay, minimising the mean batch-1 latency per image "
        "with part costs measured on this machine (`calibrate(..., per_exit=True, cost='latency')`). Histogram "
        "columns: samples leaving after " + ", ".join(f"blocks.{b}" for b in EXITS) + ", and at the final head.",
        "",
        *head_lines,
        "",
        *rows,
        "",
        "Accuracy, histogram and MACs-ratio columns are exact on any machine. MACs ratio: analytic MACs of the "
        "full model over the mean MACs spent per image (blocks run + exit heads evaluated). Estimated latency "
        "ratio: the same with the part latencies measured by the calibration. Measured latency: batch 1, "
        f"{len(images)} test images each run alone (so each takes its own exit), full and early-exit models "
        f"interleaved image by image, median of {repeats} per image, mean over images; eager fp32, "
        f"{threads} threads. Timing: **{'not measured (busy machine)' if args.accuracy_only else label}**.",
    ]
    write_section("early_exit", "\n".join(lines), args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
