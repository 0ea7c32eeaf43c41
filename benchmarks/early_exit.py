"""Early exit (LGViT) on the reference model → the "early_exit" section of BENCHMARKS.md.

Usage: .venv/bin/python benchmarks/early_exit.py [--quick]

1. Exit heads after blocks 1-4 of the 6-block reference model (vitkit_mnist_tiny on mnist5k), trained by
   soft KD from the final head with the backbone frozen.
2. One confidence threshold per row, calibrated on the 500 validation images for a top-1 drop ≤ 0.5 / 1 /
   2 points; test top-1 (500 test images) with and without exiting, exit histogram, analytic MACs ratio.
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


def main() -> None:
    from vitkit.demo import reference_artifact

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1 epoch on 1000 images, 50 latency images (smoke run)")
    ap.add_argument("--head", default="linear", help="exit head: linear | attention-pool")
    ap.add_argument("--accuracy-only", action="store_true", help="skip latency (for a busy machine)")
    ap.add_argument("--out", default="BENCHMARKS.md")
    args = ap.parse_args()
    threads = 2
    torch.set_num_threads(threads)
    epochs, limit, n_lat, repeats = (1, 1000, 50, 3) if args.quick else (3, None, 500, 5)
    ref = vitkit.load(reference_artifact())
    val = load_dataset("mnist5k", "val", model=ref)
    test = load_dataset("mnist5k", "test", model=ref)
    model = copy.deepcopy(ref)
    cfg = EarlyExitConfig(exits=EXITS, head=args.head, epochs=epochs, limit=limit, threshold=0.9)
    t0 = time.perf_counter()
    rep = vitkit.apply_(model, cfg)
    train_s = time.perf_counter() - t0
    dec = rep.steps[0].decisions
    images = [x for x, _ in iterate_batches(test, 1, limit=n_lat)]
    load = os.getloadavg()[0]
    contended = load > 0.5 * (os.cpu_count() or 1)
    label = f"contended (load {load:.1f} on {os.cpu_count()} cores): rerun quietly" if contended else "quiet"

    rows = [
        "| max drop (val) | τ | test top-1 full | test top-1 exit | Δ pts | exit histogram (test) "
        "| MACs ratio | ms full | ms exit | latency ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    results = []
    for budget in BUDGETS:
        cal = calibrate(model, val, budget)
        ev = evaluate_exits(model, test)
        reset_histogram(model)
        hist = " / ".join(str(v) for v in ev["histogram"].values())
        if args.accuracy_only:
            timing = "not measured | not measured | rerun quietly"
        else:
            ms_full, ms_exit, ratio = latency_ratio(ref, model, images, repeats)
            timing = f"{ms_full:.3f} | {ms_exit:.3f} | **{ratio:.2f}×** ({label.split(' (')[0]})"
        results.append((budget, cal, ev))
        rows.append(
            f"| {budget:g} | {cal['threshold']:.4f} | {100 * ev['top1_full']:.2f}% | {100 * ev['top1_exit']:.2f}% | "
            f"{-ev['drop_pts']:+.2f} | {hist} | {ev['macs_ratio']:.2f}× | {timing} |"
        )
    per_exit = ", ".join(
        f"{name} {100 * a:.1f}%" for name, a in zip(list(ev["histogram"]), results[-1][2]["per_exit_top1"], strict=True)
    )
    lines = ["## Early exit (LGViT) on the reference model", "", env_lines(environment()), ""]
    lines += [
        f"Reference model (6 blocks) with {args.head} exit heads after blocks {EXITS} "
        f"({dec['head_params']} head parameters), trained by soft KD (α=0.5 with labels) from the final head, "
        f"backbone frozen: {epochs} epoch(s){'' if limit is None else f' × {limit} images'}, "
        f"{train_s:.0f} s on a {'busy' if contended else 'quiet'} machine. Criterion: confidence. τ calibrated on "
        "500 validation images (one τ for all exits, the lowest whose val drop fits the budget); accuracy on 500 "
        "test images. Histogram columns: samples leaving after "
        + ", ".join(f"blocks.{b}" for b in EXITS)
        + ", and at the final head.",
        "",
        f"Test top-1 of each head alone: {per_exit}.",
        "",
        *rows,
        "",
        "Accuracy, histogram and MACs-ratio columns are exact on any machine. MACs ratio: analytic MACs of the "
        "full model over the mean MACs spent per image (blocks run + exit heads evaluated). Latency: batch 1, "
        f"{len(images)} test images each run alone (so each takes its own exit), full and early-exit models "
        f"interleaved image by image, median of {repeats} per image, mean over images; eager fp32, "
        f"{threads} threads. Timing: **{'not measured (busy machine)' if args.accuracy_only else label}**.",
    ]
    write_section("early_exit", "\n".join(lines), args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
