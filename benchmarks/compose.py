"""Composed recipes + budgeted search benchmark → the "compose" section of BENCHMARKS.md.

Usage: .venv/bin/python benchmarks/compose.py [--quick] [--part all|accuracy]

1. deit_small_patch16_224, **random init** (speed only: its accuracy is meaningless), 224², batch 16: PyTorch fp32
   eager vs pruning (-50 % MACs, l1), ToMe r=13, both composed (PyTorch), and the composed model deployed with
   vitkit's int8 path (RepQ reparameterization + ONNX Runtime dynamic int8), all timed interleaved in one loop.
2. Reference model (vitkit_mnist_tiny, MNIST-5k): ``recipes/compose_reference.yaml`` (prune 65 % → KD → W8A8)
   applied step by step, test top-1 after each step, then the composed model deployed as ORT int8: accuracy and
   batch-64 throughput against the original in PyTorch fp32 (and ORT fp32, to show the runtime's own share), and
   the same model with ToMe r=4 added before deployment (why the recipe leaves token merging out).
3. ``vitkit search`` on the reference model (default space, objective throughput, max drop 1 pt): search time,
   evaluations, Pareto front table and plot (``benchmarks/compose_pareto.png``).

``--part accuracy`` runs only the accuracy of part 2 (no timing: safe on a busy machine); ``speed``, ``reference``
and ``search`` run one part (the section then holds only that part). ``--quick`` shrinks
repeats, batches and the search so the script can be checked in a few minutes; its timings are labelled
"contended (rerun quietly)".
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import vitkit  # noqa: E402
from vitkit.bench.env import environment  # noqa: E402
from vitkit.bench.flops import count_macs  # noqa: E402
from vitkit.bench.metrics import agreement, classify, topk_accuracy  # noqa: E402
from vitkit.bench.record import env_lines, write_section  # noqa: E402
from vitkit.bench.timing import interleaved_times  # noqa: E402
from vitkit.data import calibration_set, load_dataset  # noqa: E402
from vitkit.deploy import OrtModule, deploy_int8, export_onnx  # noqa: E402
from vitkit.prune import PruneConfig  # noqa: E402
from vitkit.recipe import read_recipe  # noqa: E402
from vitkit.tokens.tome import ToMeConfig  # noqa: E402

RECIPE = ROOT / "recipes" / "compose_reference.yaml"
warnings.simplefilter("ignore")  # TorchScript tracer warnings of the token-reduction patches during export


def _ratio_rows(names, times, batch, macs=None) -> list[str]:
    base = statistics.median(times[0])
    rows = []
    for i, (name, t) in enumerate(zip(names, times, strict=True)):
        med = statistics.median(t)
        row = f"| {name} | {batch / med:.1f} | **{base / med:.2f}×** |"
        if macs is not None:
            row += " – |" if macs[i] is None else f" {macs[0] / macs[i]:.2f} |"
        rows.append(row)
    return rows


def deit_small_speed(quick: bool, tmp: Path) -> list[str]:
    batch, repeats = (4, 2) if quick else (16, 7)
    dense = vitkit.load("deit_small_patch16_224")
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    calib = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    pruned = copy.deepcopy(dense)
    vitkit.apply_(pruned, PruneConfig(ratio=0.5, importance="l1", groups=("heads", "mlp")))
    tome = copy.deepcopy(dense)
    vitkit.apply_(tome, ToMeConfig(r=13))
    composed = copy.deepcopy(pruned)
    vitkit.apply_(composed, ToMeConfig(r=13))
    variants = [
        ("PyTorch fp32 eager (dense)", dense),
        ("PyTorch prune -50% MACs", pruned),
        ("PyTorch ToMe r=13", tome),
        ("**PyTorch prune -50% + ToMe r=13**", composed),
        ("ORT fp32 (dense)", OrtModule(export_onnx(dense, tmp / "dense.onnx"))),
        ("ORT int8 (dense, vitkit deploy)", deploy_int8(dense, tmp / "dense_int8", calib=calib)),
        ("**ORT int8 prune -50% + ToMe r=13**", deploy_int8(composed, tmp / "comp_int8", calib=calib)),
    ]
    one = x[:1]
    macs = [count_macs(m, one) for _, m in variants[:4]] + [None, None, None]
    times = interleaved_times([m for _, m in variants], x, repeats=repeats)
    label = " — contended (rerun quietly)" if quick else ""
    return [
        f"### deit_small_patch16_224, random init (speed only), 224², batch {batch}{label}",
        "",
        "Random weights: accuracy on this model is meaningless, so only speed is shown. Variants are timed "
        f"round-robin in one process after warm-up, median of {repeats}; speed-ups against PyTorch fp32 eager.",
        "",
        "| variant | img/s | speed-up vs PyTorch fp32 | MAC ratio |",
        "|---|---|---|---|",
        *_ratio_rows([n for n, _ in variants], times, batch, macs),
    ]


def reference_part(quick: bool, timing: bool, tmp: Path) -> tuple[list[str], dict]:
    from vitkit.demo import reference_artifact

    recipe = read_recipe(RECIPE)
    ref = vitkit.load(reference_artifact())
    train = load_dataset(recipe.calib.data, "train", model=ref)
    test = load_dataset(recipe.eval.data, "test", model=ref)
    calib = calibration_set(train, recipe.calib.n, seed=recipe.calib.seed)
    base_logits, labels = classify(ref, test)
    base = topk_accuracy(base_logits, labels)
    steps = list(recipe.steps)
    if quick:  # one short recovery epoch: checks the script, not the figure
        steps = [s.replace(epochs=1, limit=800) if type(s).__name__ == "DistillConfig" else s for s in steps]
    m = copy.deepcopy(ref)

    def macs(model) -> str:
        return f"{count_macs(model, test[0][0][None]) / 1e6:.2f}"

    rows = [
        f"### Reference model (`vitkit_mnist_tiny`, MNIST-5k test, {len(test)} images): "
        "`recipes/compose_reference.yaml`",
        "",
        "| after step | test top-1 % | Δ vs original pt | agreement % | MACs/img (M) | step s |",
        "|---|---|---|---|---|---|",
        f"| original | {100 * base:.2f} | – | 100.00 | {macs(copy.deepcopy(ref))} | – |",
    ]
    for cfg in steps:
        t0 = time.perf_counter()
        rep = vitkit.apply_(m, cfg, calib=calib)
        secs = time.perf_counter() - t0
        lo, _ = classify(m, test)
        acc = topk_accuracy(lo, labels)
        rows.append(
            f"| + {rep.steps[0].name} | {100 * acc:.2f} | {100 * (acc - base):+.2f} | "
            f"{100 * agreement(lo, base_logits)['agreement']:.2f} | {macs(m)} | "
            f"{secs:.1f} |"
        )

    def deployed(model, name: str, label: str, mac_col: str) -> tuple[torch.nn.Module, float]:
        """Deploy ``model`` as ORT int8, append its accuracy row; returns (session, top-1)."""
        session = deploy_int8(model, tmp / name, calib=calib)
        lo, _ = classify(session, test)
        acc = topk_accuracy(lo, labels)
        rows.append(
            f"| {label} | {100 * acc:.2f} | {100 * (acc - base):+.2f} | "
            f"{100 * agreement(lo, base_logits)['agreement']:.2f} | {mac_col} | – |"
        )
        return session, acc

    int8, acc8 = deployed(m, "ref_int8", "**deployed: ORT int8**", "–")
    # the same composed model with ToMe r=4 on top, deployed the same way: what token merging does in ORT here
    with_tome = copy.deepcopy(m)
    vitkit.apply_(with_tome, ToMeConfig(r=4))
    int8_tome, _ = deployed(with_tome, "ref_int8_tome", "*for comparison: + ToMe r=4, ORT int8*", macs(with_tome))
    result = {"base": base, "int8": acc8}
    if timing:
        batch, repeats = (16, 3) if quick else (64, 9)
        x = torch.stack([test[i][0] for i in range(batch)])
        ort_fp32 = OrtModule(export_onnx(ref, tmp / "ref_fp32.onnx"))
        names = [
            "PyTorch fp32 eager (original)",
            "ORT fp32 (original)",
            "**ORT int8 composed recipe**",
            "ORT int8 composed recipe + ToMe r=4",
        ]
        times = interleaved_times([ref, ort_fp32, int8, int8_tome], x, repeats=repeats)
        label = " — contended (rerun quietly)" if quick else ""
        rows += [
            "",
            f"Throughput, batch {batch}, 2 threads, median of {repeats} interleaved runs{label}:",
            "",
            "| variant | img/s | speed-up vs PyTorch fp32 |",
            "|---|---|---|",
            *_ratio_rows(names, times, batch),
        ]
        result["speedup"] = statistics.median(times[0]) / statistics.median(times[2])
    return rows, result


QUICK_SPACE = {
    "axes": [
        {"transform": "prune", "param": "ratio", "values": [0, 0.3], "config": {"importance": "taylor"}},
        {"transform": "tome", "param": "r", "values": [0, 4]},
    ],
    "recover": {"distill": {"epochs": 1, "limit": 500, "lr": 0.0005}},
    "deploy": ["torch", "ort_int8"],
    "fidelity": {"images": [50, 100], "repeats": [1, 2]},
    "eta": 2,
    "batch_size": 16,
}


def search_part(quick: bool, tmp: Path) -> list[str]:
    from vitkit.demo import reference_artifact
    from vitkit.search import parse_space, run_search

    budget = 4 if quick else 12
    space = parse_space(QUICK_SPACE if quick else None)
    t0 = time.perf_counter()
    res = run_search(str(reference_artifact()), "mnist5k", tmp / "search", budget=budget, space=space, max_drop=1.0)
    seconds = time.perf_counter() - t0
    shutil.copyfile(tmp / "search" / "pareto.png", ROOT / "benchmarks" / "compose_pareto.png")
    front_md = (tmp / "search" / "pareto.md").read_text().split("## Front", 1)[1].split("## All", 1)[0].strip()
    t = res.test
    label = " — contended (rerun quietly)" if quick else ""
    return [
        f"### `vitkit search` on the reference model{label}",
        "",
        f"`run_search(reference, 'mnist5k', objective='throughput', max_drop=1.0, budget={budget})`, "
        f"{'a reduced space (--quick)' if quick else 'the default space'} "
        f"({len(space.candidates())} candidates; successive halving, eta {space.eta}, rungs "
        f"{[(f.images, f.repeats) for f in space.fidelities]} = (val images, timing repeats)). "
        f"**{res.evaluations} evaluations in {seconds:.0f} s.** Best: `{res.best['label']}` — test top-1 "
        f"{100 * t['top1']:.2f}% (original {100 * t['base_top1']:.2f}%), speed-up {t['speedup']:.2f}× vs PyTorch fp32.",
        "",
        "Pareto front (val):",
        "",
        front_md,
        "",
        "![search Pareto front](benchmarks/compose_pareto.png)",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--part", choices=["all", "accuracy", "speed", "reference", "search"], default="all")
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    body = ["## Composed recipes and budgeted search (`benchmarks/compose.py`)", "", env_lines(environment()), ""]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        res: dict = {}
        if args.part in ("all", "speed"):
            body += deit_small_speed(args.quick, tmp) + [""]
        if args.part in ("all", "accuracy", "reference"):
            ref_rows, res = reference_part(args.quick, args.part != "accuracy", tmp)
            body += ref_rows + [""]
        if args.part in ("all", "search"):
            body += search_part(args.quick, tmp) + [""]
    if "speedup" in res:
        drop = 100 * (res["base"] - res["int8"])
        ok = res["speedup"] >= 3 and drop <= 1
        body.append(
            f"Target ≥ 3× throughput at ≤ 1 pt top-1 drop on the reference model (ONNX Runtime int8 vs PyTorch fp32): "
            f"{res['speedup']:.2f}× at {drop:+.2f} pt drop → **{'met' if ok else 'not met'}**."
        )
    elif args.part == "accuracy":
        body.append(
            "Timing rows: not measured in this run (`--part accuracy`); the lead reruns them on a quiet machine."
        )
    body.append(f"\nSection time {time.perf_counter() - t0:.0f} s.")
    write_section("compose", "\n".join(body), ROOT / "BENCHMARKS.md")
    print("\n".join(body))


if __name__ == "__main__":
    main()
