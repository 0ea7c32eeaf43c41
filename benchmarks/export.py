"""ONNX export parity for every artifact kind → the "export" section of BENCHMARKS.md.

Usage: .venv/bin/python benchmarks/export.py [--quick]

On the reference model (vitkit_mnist_tiny, MNIST-5k), one artifact of each kind is built in-process — the
original, ToMe r=4, pruned −50 % MACs (taylor, no recovery: parity does not need accuracy), W8A8 RepQ-ViT ptq
(exported as QDQ with vitkit's scales, and deployed as ORT dynamic int8), early exit (attention-pool heads after
blocks 1-4, τ calibrated for 0.5 pt; exported as the static select graph) — and exported with
``vitkit.deploy.export_model`` exactly as ``vitkit export`` does. Reported per kind: the graph mode, max
|ONNX − PyTorch| over the logits and top-1 agreement on the 500 real test images, the file size, and the ONNX
Runtime session's batch-64 throughput against the same model in PyTorch (interleaved, median of repeats).
"""

from __future__ import annotations

import argparse
import copy
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
from vitkit.bench.record import env_lines, write_section  # noqa: E402
from vitkit.bench.timing import interleaved_times  # noqa: E402
from vitkit.data import calibration_set, load_dataset  # noqa: E402
from vitkit.deploy import OrtModule, export_model  # noqa: E402
from vitkit.early_exit import EarlyExitConfig  # noqa: E402
from vitkit.prune import PruneConfig  # noqa: E402
from vitkit.quant import PTQConfig  # noqa: E402
from vitkit.tokens.tome import ToMeConfig  # noqa: E402

warnings.simplefilter("ignore")  # TorchScript tracer warnings of the runtime patches during export


def artifacts(ref, calib, quick: bool) -> list[tuple[str, str, torch.nn.Module]]:
    """(kind, export quant mode, model) for every artifact kind."""

    def made(steps):
        m = copy.deepcopy(ref)
        vitkit.apply_(m, steps, calib=calib)
        return m

    ptq = made(PTQConfig(w_bits=8, a_bits=8, method="repq"))
    epochs, limit = (1, 500) if quick else (20, None)
    exits = made(
        EarlyExitConfig(exits=[1, 2, 3, 4], head="attention-pool", limit=limit, max_drop=0.5, train=dict(epochs=epochs))
    )
    return [
        ("original (float)", "auto", ref),
        ("token-reduced: ToMe r=4", "auto", made(ToMeConfig(r=4))),
        ("pruned: −50 % MACs (taylor)", "auto", made(PruneConfig(ratio=0.5, importance="taylor", calib_images=32))),
        ("quantized: W8A8 RepQ-ViT → QDQ", "auto", ptq),
        ("quantized: W8A8 RepQ-ViT → ORT dynamic int8", "dynamic", ptq),
        ("early exit: attention-pool heads (static select graph)", "auto", exits),
    ]


def main() -> None:
    from vitkit.demo import reference_artifact

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="100 images, short head training, 3 repeats")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = ap.parse_args()
    threads = 2
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    images, repeats, batch = (100, 3, 64) if args.quick else (500, 9, 64)
    ref = vitkit.load(reference_artifact())
    train = load_dataset("mnist5k", "train", model=ref)
    test = load_dataset("mnist5k", "test", model=ref)
    calib = calibration_set(train, 32, seed=0)
    x = torch.stack([test[i][0] for i in range(batch)])
    rows = [
        "| artifact | graph | images | max \\|Δ logit\\| | top-1 agreement | file kB | ORT vs the same model in "
        "PyTorch | ORT vs the original in PyTorch fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as d:
        for i, (kind, quant, model) in enumerate(artifacts(ref, calib, args.quick)):
            res = export_model(model, Path(d) / str(i), data=test, images=images, quant=quant, bench=False)
            session = OrtModule(res.path)
            times = interleaved_times([ref, model, session], x, repeats=repeats)
            t_ref, t_model, t_ort = (statistics.median(t) for t in times)
            rows.append(
                f"| {kind} | {res.mode} | {res.images} | {res.max_abs_diff:.2e} | {100 * res.agreement:.2f}% | "
                f"{session.file_bytes / 1024:.0f} | {t_model / t_ort:.2f}× | {t_ref / t_ort:.2f}× |"
            )
            print(rows[-1], flush=True)
    lines = ["## ONNX export parity per artifact kind (`benchmarks/export.py`)", "", env_lines(environment()), ""]
    lines += [
        f"Reference model, each artifact exported with `vitkit.deploy.export_model` (what `vitkit export ART "
        f"--format onnx` runs); parity on the first {images} MNIST-5k test images; throughput of the ONNX Runtime "
        f"session (CPU, {threads} threads) against the same model in PyTorch eager, batch {batch}, interleaved, "
        f"median of {repeats}{' — quick run' if args.quick else ''}. The QDQ graph carries vitkit's own scales, "
        "so it matches the fake-quant PyTorch model; the dynamic-int8 graph quantizes activations at run time, so "
        "it is compared against the fake-quant model it was deployed from (small logit differences, same "
        "decisions); the fake-quant PyTorch model is a slow accuracy simulation, hence the last column. "
        "The early-exit graph computes every exit and selects per sample (same outputs as PyTorch's "
        "exiting forward, no compute saved in ORT).",
        "",
        *rows,
        "",
        f"Section time {time.perf_counter() - t0:.0f} s.",
    ]
    write_section("export", "\n".join(lines), args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
