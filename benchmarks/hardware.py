"""What this machine offers, side by side with what a user would try first → the "hardware" section of BENCHMARKS.md.

Usage: .venv/bin/python benchmarks/hardware.py [--quick] [--no-compile] [--out BENCHMARKS.md]

deit_small_patch16_224 (random init: speed only), batch 16, fp32 input, default PyTorch threading, every variant
timed interleaved in one process, median of repeats; the environment lines give the CPU's ISA flags and a GEMM
probe per dtype. Rows: PyTorch fp32 eager, ``torch.compile`` (fp32), ``model.bfloat16()`` (the one-liner, input
cast), vitkit ``precision: bf16``, ONNX Runtime fp32, ORT ``quantize_dynamic`` with its defaults, and vitkit's
``deploy_int8`` (RepQ fold + outlier split + ORT int8). Agreement is top-1 agreement with fp32 eager on the timed
(random) batch — a sanity check, not accuracy (the real-model accuracy lives in the ``real`` section).
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
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import vitkit  # noqa: E402
from vitkit.bench.env import environment  # noqa: E402
from vitkit.bench.record import env_lines, write_section  # noqa: E402
from vitkit.bench.timing import interleaved_times  # noqa: E402
from vitkit.deploy import OrtModule, deploy_int8, export_onnx  # noqa: E402
from vitkit.deploy.ort import ort_dynamic_int8  # noqa: E402
from vitkit.quant import PrecisionConfig  # noqa: E402

BATCH = 16


class CastTo(nn.Module):
    """What a user writes around ``model.bfloat16()``: cast the input, return fp32 logits."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


def build(args, tmp: Path) -> list[tuple[str, nn.Module]]:
    torch.manual_seed(0)
    base = vitkit.load("deit_small_patch16_224").eval()
    calib = torch.randn(16, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    rows: list[tuple[str, nn.Module]] = [("PyTorch fp32 eager", base)]
    if not args.no_compile:
        rows.append(("torch.compile (fp32)", torch.compile(copy.deepcopy(base))))
    rows.append(("model.bfloat16() (one-liner)", CastTo(copy.deepcopy(base).bfloat16(), torch.bfloat16)))
    bf16 = copy.deepcopy(base)
    vitkit.apply_(bf16, PrecisionConfig(require_native=False))
    rows.append(("vitkit precision: bf16", bf16))
    fp32_onnx = export_onnx(base, tmp / "fp32.onnx", batch=BATCH)
    rows.append(("ONNX Runtime fp32", OrtModule(fp32_onnx)))
    ort_dynamic_int8(fp32_onnx, tmp / "ort_defaults.onnx", per_channel=False, reduce_range=False, matmul_only=False)
    rows.append(("ORT quantize_dynamic defaults", OrtModule(tmp / "ort_defaults.onnx")))
    rows.append(("vitkit deploy_int8 (RepQ fold + ORT int8)", deploy_int8(base, tmp / "vitkit_int8", calib=calib)))
    return rows


def measure(rows, repeats: int) -> list[dict]:
    x = torch.randn(BATCH, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ref = rows[0][1](x).argmax(-1)
        agree = [float((m(x).argmax(-1) == ref).float().mean()) for _, m in rows]
    times = interleaved_times([m for _, m in rows], x, repeats=repeats, warmup=2)
    ips = [BATCH / statistics.median(t) for t in times]
    return [
        {"variant": name, "img_s": round(v, 1), "x_fp32": round(v / ips[0], 2), "agree": round(a, 3)}
        for (name, _), v, a in zip(rows, ips, agree, strict=True)
    ]


def render(results: list[dict], env: dict, seconds: float, quick: bool) -> str:
    lines = [
        "## What this machine offers (`benchmarks/hardware.py`" + (" --quick" if quick else "") + ")",
        "",
        __doc__.split("\n\n", 2)[2].strip().replace("\n", " "),
        "",
        env_lines(env),
        "",
        "| variant | img/s (batch 16) | × vs PyTorch fp32 eager | top-1 agreement with fp32 (random batch) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['variant']} | {r['img_s']} | ×{r['x_fp32']:.2f} | {100 * r['agree']:.1f} % |" for r in results]
    lines += ["", f"Total run time {seconds / 60:.1f} min."]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 repeats instead of 9 (smoke run)")
    ap.add_argument("--no-compile", action="store_true", help="leave out torch.compile (its compile takes minutes)")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    env = environment()
    with tempfile.TemporaryDirectory() as tmp:
        results = measure(build(args, Path(tmp)), repeats=3 if args.quick else 9)
    for r in results:
        print(f"{r['variant']:<45} {r['img_s']:>8} img/s  ×{r['x_fp32']:.2f}  agree {r['agree']:.3f}")
    write_section("hardware", render(results, env, time.perf_counter() - t0, args.quick), args.out)


if __name__ == "__main__":
    main()
