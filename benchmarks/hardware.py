"""What this machine offers, side by side with what a user would try first → the "hardware" section of BENCHMARKS.md.

Usage: .venv/bin/python benchmarks/hardware.py [--quick] [--part speed,real] [--weights W] [--data DIR] [--out F]

Every variant of a table is timed interleaved with the others in one process (median of repeats, batch 16, fp32
input, default PyTorch threading); the environment lines give the CPU's ISA flags and a GEMM probe per dtype, and
the int8 roof is a 2048³ ``torch._int_mm`` measured in the same run. The user's first tries: PyTorch fp32 eager,
``torch.compile``, ``model.bfloat16()`` (input cast), torchao ``Int8DynamicActivationInt8WeightConfig`` +
``torch.compile``, ONNX Runtime fp32, ORT ``quantize_dynamic`` with its defaults. vitkit's rows are the candidates
``runtime: auto`` measures (each built by :func:`vitkit.deploy.deploy`), the one it chose, and the composed recipe
on the chosen runtime.

speed — deit_small_patch16_224, random init (speed only; ``auto`` chooses on speed alone here, since agreement of a
random-init model's near-uniform logits means nothing); composed: prune −50 % MACs (l1, heads + MLP) + ToMe r=13.
real — the real ViT-Ti (``benchmarks/real.py``'s model and splits): ``auto`` scores its candidates on the 100-image
val split (budget 1 pt of top-1), every row is scored on the 500-image test split; composed: ToMe on the runtime
``auto`` chose for the dense model, r the mildest of 8–13 that reaches ×4 (timed, not chosen on accuracy; pruning is
left out on this model: without a long KD recovery it costs over 20 pt, BENCHMARKS.md "real").
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import vitkit  # noqa: E402
from vitkit.bench.env import environment  # noqa: E402
from vitkit.bench.flops import count_macs  # noqa: E402
from vitkit.bench.record import env_lines, write_section  # noqa: E402
from vitkit.bench.timing import interleaved_times  # noqa: E402
from vitkit.deploy import OrtModule, deploy, export_onnx  # noqa: E402
from vitkit.deploy.auto import choose_runtime  # noqa: E402
from vitkit.deploy.ort import ort_dynamic_int8  # noqa: E402
from vitkit.prune import PruneConfig  # noqa: E402
from vitkit.tokens import ToMeConfig  # noqa: E402

BATCH = 16
RESULTS = ROOT / "benchmarks" / "hardware_results.json"


class CastTo(nn.Module):
    """What a user writes around ``model.bfloat16()``: cast the input, return fp32 logits."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


def torchao_int8(model: nn.Module) -> nn.Module | str:
    """torchao's int8 dynamic-activation / int8-weight config + ``torch.compile``, or why it is unavailable."""
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as exc:
        return f"torchao not installed ({exc.name}): pip install -e '.[dev]'"
    m = copy.deepcopy(model)
    quantize_(m, Int8DynamicActivationInt8WeightConfig())
    return torch.compile(m)


def anchors(base: nn.Module, tmp: Path, tag: str) -> tuple[list[tuple[str, nn.Module]], list[str]]:
    """The user's first tries on ``base`` (and notes for any that cannot run here)."""
    rows = [("PyTorch fp32 eager", base), ("torch.compile (fp32)", torch.compile(copy.deepcopy(base)))]
    rows.append(("model.bfloat16() (one-liner)", CastTo(copy.deepcopy(base).bfloat16(), torch.bfloat16)))
    notes = []
    ao = torchao_int8(base)
    if isinstance(ao, str):
        notes.append(ao)
    else:
        rows.append(("torchao int8 dynamic + torch.compile", ao))
    fp32_onnx = export_onnx(base, tmp / f"{tag}_fp32.onnx", batch=BATCH)
    rows.append(("ONNX Runtime fp32", OrtModule(fp32_onnx)))
    ort_dynamic_int8(fp32_onnx, tmp / f"{tag}_ort.onnx", per_channel=False, reduce_range=False, matmul_only=False)
    rows.append(("ORT quantize_dynamic defaults", OrtModule(tmp / f"{tag}_ort.onnx")))
    return rows, notes


def builder(model: nn.Module, calib: torch.Tensor):
    def build(runtime: str, where: Path) -> nn.Module:
        return deploy(model, where, runtime=runtime, calib=calib, example=calib[:2])

    return build


def int8_roof(n: int = 2048, repeats: int = 5) -> float:
    """``torch._int_mm`` int8 × int8 → int32 at n³: GOP/s, the roof the dense int8 model is compared with."""
    a = torch.randint(-128, 128, (n, n), dtype=torch.int8)
    b = torch.randint(-128, 128, (n, n), dtype=torch.int8)
    torch._int_mm(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch._int_mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def timed(rows: list[tuple[str, nn.Module]], x: torch.Tensor, repeats: int) -> list[float]:
    """Images/s of every row, interleaved."""
    with torch.inference_mode():
        for _, m in rows:  # compile / first-call costs out of the timing
            m(x)
    times = interleaved_times([m for _, m in rows], x, repeats=repeats, warmup=1)
    return [x.shape[0] / statistics.median(t) for t in times]


# -- speed: deit_small random init -----------------------------------------------------------------------------------
def part_speed(args, tmp: Path) -> dict:
    torch.manual_seed(0)
    base = vitkit.load("deit_small_patch16_224").eval()
    g = torch.Generator().manual_seed(1)
    calib, images = torch.randn(16, 3, 224, 224, generator=g), torch.randn(32, 3, 224, 224, generator=g)
    rows, notes = anchors(base, tmp, "deit_small")
    choice, runners = choose_runtime(
        base, builder(base, calib), images, None, max_drop=100.0, cache=False, workdir=tmp / "auto_deit"
    )
    rows += [(f"vitkit {name}", r) for name, r in runners.items() if name != "torch-fp32"]
    composed = copy.deepcopy(base)
    vitkit.apply_(composed, PruneConfig(ratio=0.5, importance="l1", groups=("heads", "mlp")))
    vitkit.apply_(composed, ToMeConfig(r=13))
    rows.append(
        (f"vitkit prune −50 % MACs + ToMe r=13 @ {choice.chosen}", builder(composed, calib)(choice.chosen, tmp))
    )
    if choice.chosen != "ort-int8":
        rows.append(("vitkit prune −50 % MACs + ToMe r=13 @ ort-int8", builder(composed, calib)("ort-int8", tmp / "c")))
    ips = timed(rows, images[:BATCH], 3 if args.quick else 9)
    gops = 2 * count_macs(base, torch.zeros(1, 3, 224, 224)) * BATCH / 1e9
    out = [{"variant": n, "img_s": v, "x": v / ips[0]} for (n, _), v in zip(rows, ips, strict=True)]
    return {"rows": out, "choice": choice.to_dict(), "notes": notes, "gop_per_batch": gops, "roof": int8_roof()}


# -- real: the real ViT-Ti ------------------------------------------------------------------------------------------
def part_real(args, tmp: Path) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import real  # the real-model benchmark's model, splits and scoring

    weights, data = args.weights or str(real.WEIGHTS), args.data or str(real.DATA)
    if not Path(weights).exists() or not Path(data).exists():
        raise SystemExit(f"real ViT-Ti weights or images not found ({weights}, {data}): pass --weights/--data")
    ctx = real.Ctx(types.SimpleNamespace(weights=weights, data=data, quick=args.quick, calib_images=32))
    base, calib = ctx.model, ctx.calib()
    val = ctx.split("val")
    rows, notes = anchors(base, tmp, "vit_tiny")
    choice, runners = choose_runtime(
        base, builder(base, calib), val.images, val.labels, max_drop=1.0, cache=False, workdir=tmp / "auto_real"
    )
    rows += [(f"vitkit {name}", r) for name, r in runners.items() if name != "torch-fp32"]
    r, composed, tried = tome_for_speed(base, calib, choice.chosen, tmp, ctx.split("test").images[:BATCH])
    rows.append((f"vitkit ToMe r={r} @ {choice.chosen}", composed))
    scores = [ctx.score(m) for _, m in rows]
    ips = ctx.speed([m for _, m in rows], repeats=3 if args.quick else 9)
    out = [{"variant": n, "img_s": v, "x": v / ips[0], **s} for (n, _), v, s in zip(rows, ips, scores, strict=True)]
    res = {
        "rows": out,
        "choice": choice.to_dict(),
        "notes": notes,
        "fp32_top1": ctx.fp32()["top1"],
        "tome_select": tried,
    }
    return res


#: the composed recipe's speed goal (× PyTorch fp32 eager) and the ToMe r values tried, mildest first
COMPOSE_SPEED = 4.0
TOME_R = (8, 9, 10, 11, 13)


def tome_for_speed(base, calib, runtime: str, tmp: Path, x: torch.Tensor):
    """The mildest token merging that reaches the speed goal: the smallest ToMe r of :data:`TOME_R` whose model on
    ``runtime`` is ≥ :data:`COMPOSE_SPEED` × the fp32 model (timed interleaved on ``x``; no accuracy is looked at,
    the test split then scores it). Returns ``(r, runner, [{r, x}])``."""
    tried = []
    for r in TOME_R:
        tome = copy.deepcopy(base)
        vitkit.apply_(tome, ToMeConfig(r=r))
        runner = builder(tome, calib)(runtime, tmp / f"tome{r}")
        fp32, got = timed([("fp32", base), ("tome", runner)], x, 5)
        tried.append({"r": r, "x": got / fp32})
        if got / fp32 >= COMPOSE_SPEED:
            break
    return r, runner, tried


# -- rendering ------------------------------------------------------------------------------------------------------
ANCHORS = (
    "torch.compile (fp32)",
    "model.bfloat16() (one-liner)",
    "torchao int8 dynamic + torch.compile",
    "ONNX Runtime fp32",
    "ORT quantize_dynamic defaults",
)


def _row(rows: list[dict], prefix: str) -> dict | None:
    return next((r for r in rows if r["variant"].startswith(prefix)), None)


def figures(res: dict) -> list[list[str]]:
    """The issue's figures: target, measured, met."""
    out = []
    speed, real_res = res.get("speed"), res.get("real")
    if speed:
        rows = speed["rows"]
        best = max((r for r in rows if r["variant"] in ANCHORS), key=lambda r: r["x"])
        chosen = _row(rows, f"vitkit {speed['choice']['chosen']}")
        ratio = chosen["x"] / best["x"]
        out.append(
            [
                f"auto (dense, {chosen['variant'][7:]}) vs best anchor ({best['variant']}), deit_small",
                f"×{chosen['x']:.2f} / ×{best['x']:.2f} = ×{ratio:.2f}",
                "≥ ×1.2",
                _met(ratio >= 1.2),
            ]
        )
        comp = max((r for r in rows if "prune" in r["variant"]), key=lambda r: r["x"])
        out.append(
            [f"composed ({comp['variant'][7:]}), deit_small", f"×{comp['x']:.2f}", "≥ ×10", _met(comp["x"] >= 10)]
        )
        int8 = max(
            (r for r in rows if r["variant"].startswith("vitkit torch-w8a8")), key=lambda r: r["x"], default=None
        )
        if int8:
            tops = speed["gop_per_batch"] * int8["img_s"] / BATCH
            frac = tops / speed["roof"]
            out.append(
                [
                    f"dense int8 ({int8['variant'][7:]}) vs int8 GEMM roof (2048³ _int_mm {speed['roof']:.0f} GOP/s)",
                    f"{tops:.0f} GOP/s = {100 * frac:.0f} %",
                    "≥ 50 %",
                    _met(frac >= 0.5),
                ]
            )
    if real_res:
        rows = real_res["rows"]
        chosen = _row(rows, f"vitkit {real_res['choice']['chosen']}")
        best = max((r for r in rows if r["variant"] in ANCHORS), key=lambda r: r["x"])
        out.append(
            [
                f"auto (dense, {chosen['variant'][7:]}) on the real ViT-Ti: Δ top-1",
                f"{100 * chosen['delta']:+.2f} pt (×{chosen['x']:.2f}; best anchor ×{best['x']:.2f})",
                "≥ −1 pt",
                _met(chosen["delta"] >= -0.01),
            ]
        )
        comp = _row(rows, "vitkit ToMe")
        out.append(
            [
                f"composed ({comp['variant'][7:]}) on the real ViT-Ti",
                f"×{comp['x']:.2f} at {100 * comp['delta']:+.2f} pt",
                "≥ ×4 at ≥ −2 pt",
                _met(comp["x"] >= 4 and comp["delta"] >= -0.02),
            ]
        )
    return out


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def render(res: dict, env: dict) -> str:
    lines = [
        "## What this machine offers (`benchmarks/hardware.py`)",
        "",
        __doc__.split("\n\n", 2)[2].strip(),
        "",
        env_lines(env),
        "",
    ]
    if res.get("speed"):
        s = res["speed"]
        lines += [
            f"### deit_small_patch16_224, random init, batch {BATCH} (speed)",
            "",
            *([f"Run {s['run']}.", ""] if "run" in s else []),
            "| variant | img/s | × vs PyTorch fp32 eager |",
            "|---|---|---|",
        ]
        lines += [f"| {r['variant']} | {r['img_s']:.1f} | ×{r['x']:.2f} |" for r in s["rows"]]
        lines += ["", f"`auto` on this model (speed only): {_choice(s['choice']).reason}", ""]
        lines += [f"- {n}" for n in s["notes"]]
    if res.get("real"):
        r0 = res["real"]
        lines += [
            "### The real ViT-Ti (accuracy on the 500-image test split, speed at batch 16)",
            "",
            *([f"Run {r0['run']}.", ""] if "run" in r0 else []),
            f"fp32 top-1 {100 * r0['fp32_top1']:.2f} %.",
            "",
            "| variant | top-1 % | Δ pt | agree % | img/s | × vs PyTorch fp32 eager |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['variant']} | {100 * r['top1']:.2f} | {100 * r['delta']:+.2f} | {100 * r['agree']:.1f} | "
            f"{r['img_s']:.1f} | ×{r['x']:.2f} |"
            for r in r0["rows"]
        ]
        tried = ", ".join(f"r={t['r']} ×{t['x']:.2f}" for t in r0.get("tome_select", []))
        lines += [
            "",
            f"ToMe r of the composed row: the mildest of {TOME_R} whose composed model is ≥ ×{COMPOSE_SPEED:g} "
            f"(timed only; accuracy is read on the test split afterwards): {tried}.",
            "",
            "`auto`'s candidates on the real ViT-Ti (val split, budget 1 pt):",
            "",
            _choice_table(r0["choice"]),
            "",
        ]
        lines += [f"- {n}" for n in r0["notes"]]
    lines += ["### Figures", "", "| figure | measured | target | met |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(f)} |" for f in figures(res)]
    lines += ["", f"Total run time {res['minutes']:.1f} min."]
    return "\n".join(lines)


def _choice(choice: dict):
    """The stored choice, its reason re-worded by the current :func:`vitkit.deploy.auto.decide`."""
    from vitkit.deploy.auto import AutoChoice, decide

    c = AutoChoice.from_dict(choice)
    return decide(c.candidates, c.max_drop, c.machine, c.metric, c.key)


def _choice_table(choice: dict) -> str:
    return _choice(choice).markdown()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 repeats instead of 9, small splits (smoke run)")
    ap.add_argument("--part", default="speed,real", help="comma list of: speed, real")
    ap.add_argument("--weights", default=None, help="real ViT-Ti weights (default: benchmarks/real.py's)")
    ap.add_argument("--data", default=None, help="real ImageNet sample folder (default: benchmarks/real.py's)")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--render-only", action="store_true", help="rebuild the section from the stored results")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    import torch._dynamo.config as dynamo_config

    from vitkit.deploy.torch_int8 import RECOMPILE_LIMIT

    # every compiled variant (the anchors' too) may compile once per model and shape without falling back to eager
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    if args.render_only:
        stored = json.loads(RESULTS.read_text())
        write_section("hardware", render(stored["results"], stored["env"]), args.out)
        return
    t0 = time.perf_counter()
    env = environment()
    res: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for part in [p.strip() for p in args.part.split(",") if p.strip()]:
            if part not in ("speed", "real"):
                raise SystemExit(f"unknown part {part!r}: use speed, real")
            started = time.perf_counter()
            res[part] = (part_speed if part == "speed" else part_real)(args, Path(tmp))
            res[part]["run"] = f"{environment(probe=False)['date']}, {(time.perf_counter() - started) / 60:.1f} min"
            for r in res[part]["rows"]:
                print(f"{part:6} {r['variant']:<60} {r['img_s']:8.1f} img/s ×{r['x']:.2f}", flush=True)
    if RESULTS.exists():  # parts not run this time keep their stored results
        stored = json.loads(RESULTS.read_text())["results"]
        res = {**{k: v for k, v in stored.items() if k in ("speed", "real")}, **res}
    res["minutes"] = (time.perf_counter() - t0) / 60
    RESULTS.write_text(json.dumps({"env": env, "results": res}, indent=1, default=str) + "\n")
    write_section("hardware", render(res, env), args.out)


if __name__ == "__main__":
    main()
