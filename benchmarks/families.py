"""Beyond the plain ViT: each model family's deployed speed and quantized agreement → "families" in BENCHMARKS.md.

Usage: .venv/bin/python benchmarks/families.py [--quick] [--part speed,accuracy] [--families swin,eva02,...]

speed — the real-size timm model of each family, random init (speed only), batch 16, 224² input, every row of a
family timed interleaved in one process (median of repeats, default PyTorch threading): PyTorch fp32 eager vs
vitkit's deployed int8 (``torch-w8a8-onednn`` where this CPU has it, ``torch-w8a8``, ``ort-int8``: each built by
:func:`vitkit.deploy.deploy` from a RepQ-calibrated model; the fastest is the family's "deployed int8"), with the
file size of the fp32 and the int8 weights. Swin-T adds heads + MLP pruning to −50 % MACs (l1, no recovery:
speed only); EVA-02 adds ToMe at the smallest r reaching ×1.5 fewer MACs, and checks r=0 is exact; its
(fp32, ToMe) pair is timed in two more rounds, and the figure is the median ratio of the three.
Note: glibc's dynamic mmap threshold makes PyTorch eager's speed bimodal on this class of machine (EVA-02 tiny fp32:
~33 or ~47 img/s in different processes, the same code; ``MALLOC_MMAP_THRESHOLD_`` fixed gives the fast state every
time). Rows are interleaved so both states hit every row, but a ratio is only as steady as that state: rerun a
figure that sits near its line.
accuracy — a small config of each family trained here on MNIST-5k (32² input; 28² for Swin, patch 2, so that its
windows are Swin-T's 7×7; 64² for TinyViT, whose four stages halve the grid three times; EfficientFormer at its
fixed 224²), then PTQ (RepQ-ViT, W8A8 and W4A4, 32 calibration
images; and W8A8 with the option ``softmax: uniform`` in place of the paper's log√2 post-softmax quantizer): top-1
on the 500-image test split and agreement with the fp32 model. A method the family refuses is
shown with its refusal.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
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
from vitkit.errors import UnsupportedModelError  # noqa: E402

BATCH = 16
RESULTS = ROOT / "benchmarks" / "families_results.json"
INT8 = ("torch-w8a8-onednn", "torch-w8a8", "ort-int8")
#: family → real-size timm model (speed part)
REAL = {
    "swin": "swin_tiny_patch4_window7_224",
    "tiny_vit": "tiny_vit_5m_224",
    "efficientformer": "efficientformer_l1",
    "eva02": "eva02_tiny_patch14_224",
    "siglip": "vit_base_patch16_siglip_224",
    "vitamin": "vitamin_small_224",
}
#: family → (timm model, small config kwargs, input side) trained on MNIST-5k (accuracy part)
SMALL = {
    # Swin-T's own window (7×7: 49 keys) and head width (32) on MNIST's 28² (patch 2: a 14×14 grid, shifted
    # windows in stage 1, one window in stage 2); a 4×4-window / 16-wide-head config scored 98.6 % W8A8 agreement
    "swin": (
        "swin_tiny_patch4_window7_224",
        dict(img_size=28, patch_size=2, window_size=7, embed_dim=64, depths=(2, 2), num_heads=(2, 4)),
        28,
    ),
    "tiny_vit": (
        "tiny_vit_5m_224",
        dict(
            embed_dims=(32, 48, 64, 96),
            depths=(1, 1, 2, 1),
            num_heads=(1, 2, 4, 4),
            window_sizes=(4, 4, 4, 2),
            pretrained_cfg_overlay=dict(input_size=(3, 64, 64)),  # TinyViT runs at any size; this one is its own
        ),
        64,
    ),
    "efficientformer": ("efficientformer_l1", dict(depths=(1, 1, 2, 2), embed_dims=(16, 32, 48, 64), num_vit=1), 224),
    "eva02": ("eva02_tiny_patch14_224", dict(img_size=32, patch_size=4, embed_dim=96, depth=4, num_heads=3), 32),
    "siglip": ("vit_base_patch16_siglip_224", dict(img_size=32, patch_size=4, embed_dim=96, depth=4, num_heads=3), 32),
    "vitamin": ("vitamin_small_224", dict(img_size=64, depth=2), 64),
}
#: training epochs per family (the cheap 32² configs train longer; EfficientFormer runs at its fixed 224²)
EPOCHS = {"swin": 30, "tiny_vit": 8, "efficientformer": 15, "eva02": 20, "siglip": 20, "vitamin": 6}
#: extra timing rounds of EVA-02's (fp32, ToMe) pair; the figure is the median ratio over all rounds
TOME_EXTRA_ROUNDS = 2
FIGURES = {"swin_int8": 1.8, "swin_prune": 1.6, "swin_agree": 0.99, "eva_tome": 1.4}


def _try(fn, *args, **kwargs):
    """``fn(...)``, or the refusal message (a named ``UnsupportedModelError``) as a string."""
    try:
        return fn(*args, **kwargs)
    except UnsupportedModelError as exc:
        return f"refused: {str(exc).splitlines()[0]}"


def state_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def file_bytes(runner: nn.Module, where: Path) -> int:
    """Bytes of a deployed runner's weights: its ONNX file, else its state dict (int8 codes + scales)."""
    path = getattr(runner, "path", None)
    return Path(path).stat().st_size if path else state_bytes(runner)


def timed(rows: list[tuple[str, nn.Module]], x: torch.Tensor, repeats: int) -> list[float]:
    """Images/s of every row, interleaved (first calls — compilation — out of the timing)."""
    with torch.inference_mode():
        for _, m in rows:
            m(x)
    times = interleaved_times([m for _, m in rows], x, repeats=repeats, warmup=1)
    return [x.shape[0] / statistics.median(t) for t in times]


def tome_for_macs(model: nn.Module, x: torch.Tensor, target: float) -> tuple[int, nn.Module, float]:
    """The smallest ToMe r whose MACs are ≤ 1/target of the dense model's (analytic count)."""
    dense = count_macs(model, x[:1])
    for r in range(1, 64):
        m = copy.deepcopy(model)
        vitkit.apply_(m, vitkit.ToMeConfig(r=r))
        ratio = dense / count_macs(m, x[:1])
        if ratio >= target:
            return r, m, ratio
    raise RuntimeError("no ToMe r reaches the MAC target")


def part_speed(args, tmp: Path, families: list[str]) -> dict:
    from vitkit.deploy import deploy

    out = {}
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 3, 224, 224, generator=g)
    calib = torch.randn(16, 3, 224, 224, generator=g)
    for fam in families:
        torch.manual_seed(0)
        base = vitkit.load(REAL[fam]).eval()
        fam_res: dict = {"model": REAL[fam], "fp32_bytes": state_bytes(base), "notes": []}
        rows: list[tuple[str, nn.Module]] = [("PyTorch fp32 eager", base)]
        sizes = {}
        for rt in INT8:
            r = _try(deploy, base, tmp / f"{fam}-{rt}", runtime=rt, calib=calib, example=calib[:2])
            if isinstance(r, str):
                fam_res["notes"].append(f"{rt}: {r}")
                continue
            rows.append((f"vitkit {rt}", r))
            sizes[rt] = file_bytes(r, tmp)
        if fam == "swin":
            pruned = copy.deepcopy(base)
            res = _try(vitkit.apply_, pruned, vitkit.PruneConfig(ratio=0.5, importance="l1", groups=("heads", "mlp")))
            if isinstance(res, str):
                fam_res["notes"].append(f"prune: {res}")
            else:
                macs = count_macs(base, x[:1]) / count_macs(pruned, x[:1])
                rows.append((f"prune heads+MLP (×{macs:.2f} fewer MACs), fp32 eager", pruned))
        if fam == "eva02":
            zero = copy.deepcopy(base)
            res = _try(vitkit.apply_, zero, vitkit.ToMeConfig(r=0))
            if isinstance(res, str):
                fam_res["notes"].append(f"tome: {res}")
            else:
                with torch.inference_mode():
                    fam_res["tome_r0_exact"] = bool(torch.equal(zero(x[:2]), base(x[:2])))
                r, merged, ratio = tome_for_macs(base, x, 1.5)
                rows.append((f"ToMe r={r} (×{ratio:.2f} fewer MACs), fp32 eager", merged))
        ips = timed(rows, x, 3 if args.quick else 11)
        fam_res["rows"] = [
            {"variant": n, "img_s": v, "x": v / ips[0], "bytes": sizes.get(n.removeprefix("vitkit "))}
            for (n, _), v in zip(rows, ips, strict=True)
        ]
        tome = next((m for n, m in rows if n.startswith("ToMe")), None)
        if tome is not None:  # a figure near its line: two more rounds of the pair, each interleaved on its own
            fam_res["tome_rounds"] = [fam_res["rows"][-1]["x"]]
            for _ in range(TOME_EXTRA_ROUNDS):
                b, t = timed([("base", base), ("tome", tome)], x, 3 if args.quick else 11)
                fam_res["tome_rounds"].append(t / b)
        out[fam] = fam_res
        keep_partial("speed", fam, fam_res)
        for row in fam_res["rows"]:
            print(f"{fam:16} {row['variant']:<50} {row['img_s']:8.1f} img/s ×{row['x']:.2f}", flush=True)
    return out


def _agreement(model: nn.Module, ref_logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> dict:
    with torch.inference_mode():
        logits = torch.cat([model(x[i : i + 200]) for i in range(0, len(x), 200)])
    pred = logits.argmax(1)
    return {"top1": float((pred == y).float().mean()), "agree": float((pred == ref_logits.argmax(1)).float().mean())}


def part_accuracy(args, tmp: Path, families: list[str]) -> dict:
    from vitkit.data import calibration_set, input_spec, load_dataset
    from vitkit.training.loop import TrainConfig, train_classifier

    out = {}
    for fam in families:
        arch, kw, side = SMALL[fam]
        torch.manual_seed(0)
        model = vitkit.load(arch, num_classes=10, **kw)
        spec = input_spec(model, height=side, width=side, mean=(0.5,) * 3, std=(0.5,) * 3)
        train = load_dataset("mnist5k", "train", spec=spec)
        test = load_dataset("mnist5k", "test", spec=spec)
        started = time.perf_counter()
        epochs = 1 if args.quick else EPOCHS[fam]
        train_classifier(model, train, TrainConfig(epochs=epochs, batch_size=64, lr=2e-3, warmup_epochs=0.5, shift=0.0))
        x = torch.stack([test[i][0] for i in range(len(test))])
        y = torch.tensor([int(test[i][1]) for i in range(len(test))])
        with torch.inference_mode():
            ref = torch.cat([model.eval()(x[i : i + 200]) for i in range(0, len(x), 200)])
        res = {"model": arch, "epochs": epochs, "train_min": (time.perf_counter() - started) / 60}
        res["when"] = environment(probe=False)["date"]  # rows of one table may come from runs of different days
        res["fp32"] = _agreement(model, ref, x, y)
        calib = calibration_set(load_dataset("mnist5k", "calib", spec=spec), 32)
        settings = {"w8a8": (8, None), "w4a4": (4, None), "w8a8_uniform_softmax": (8, "uniform")}
        for key, (bits, softmax) in settings.items():
            q = copy.deepcopy(model)
            cfg = vitkit.PTQConfig(w_bits=bits, a_bits=bits, method="repq", calib_images=32, softmax=softmax)
            r = _try(vitkit.apply_, q, cfg, calib=calib)
            res[key] = r if isinstance(r, str) else _agreement(q, ref, x, y)
        out[fam] = res
        print(fam, json.dumps(res), flush=True)
        keep_partial("accuracy", fam, res)
    return out


def keep_partial(part: str, family: str, result: dict) -> None:
    """Store one family's result as soon as it is measured (a long run stopped half-way keeps what it measured)."""
    stored = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"env": environment(probe=False), "results": {}}
    if not isinstance(stored["results"].get(part), dict):  # an older file kept the run's date as a string
        stored["results"][part] = {}
    stored["results"][part][family] = result
    RESULTS.write_text(json.dumps(stored, indent=1, default=str) + "\n")


def _met(ok: bool | None) -> str:
    return "–" if ok is None else ("yes" if ok else "**no**")


def figures(res: dict) -> list[list[str]]:
    rows = []
    sw = res.get("speed", {}).get("swin")
    if sw:
        int8 = [r for r in sw["rows"] if r["variant"].startswith("vitkit ")]
        best = max(int8, key=lambda r: r["x"]) if int8 else None
        rows.append(
            [
                "Swin-T deployed int8 vs PyTorch fp32 eager, batch 16",
                f"×{best['x']:.2f} ({best['variant']})" if best else "not measured",
                f"≥ ×{FIGURES['swin_int8']}",
                _met(best["x"] >= FIGURES["swin_int8"] if best else None),
            ]
        )
        pr = next((r for r in sw["rows"] if r["variant"].startswith("prune")), None)
        rows.append(
            [
                "Swin-T heads+MLP pruning −50 % MACs, fp32",
                f"×{pr['x']:.2f}" if pr else "not measured",
                f"≥ ×{FIGURES['swin_prune']}",
                _met(pr["x"] >= FIGURES["swin_prune"] if pr else None),
            ]
        )
    sa = res.get("accuracy", {}).get("swin")
    if sa:
        for key, what in (("w8a8", "log√2 softmax, RepQ-ViT's"), ("w8a8_uniform_softmax", "option `softmax: uniform`")):
            a = sa.get(key)
            if a is None:
                continue
            ok = isinstance(a, dict)
            rows.append(
                [
                    f"small Swin (MNIST-5k) W8A8 RepQ agreement with fp32 ({what})",
                    f"{100 * a['agree']:.1f} %" if ok else a,
                    f"≥ {100 * FIGURES['swin_agree']:.0f} %",
                    _met(a["agree"] >= FIGURES["swin_agree"] if ok else None),
                ]
            )
    ev = res.get("speed", {}).get("eva02")
    if ev:
        tm = next((r for r in ev["rows"] if r["variant"].startswith("ToMe")), None)
        rounds = ev.get("tome_rounds") or ([tm["x"]] if tm else [])
        ratio = statistics.median(rounds) if rounds else None
        spread = ", ".join(f"×{v:.2f}" for v in rounds)
        rows.append(
            [
                "EVA-02 tiny ToMe (×1.5 MACs) measured (median of rounds)",
                f"×{ratio:.2f} ({tm['variant'].split(' (')[0]}; rounds {spread}; r=0 exact: {ev.get('tome_r0_exact')})"
                if tm
                else "not measured",
                f"≥ ×{FIGURES['eva_tome']}",
                _met(ratio >= FIGURES["eva_tome"] and ev.get("tome_r0_exact") if tm else None),
            ]
        )
    return rows


def _when(res: dict, part: str) -> str:
    run = res.get(f"{part}_run", "")
    return run.get("when", "") if isinstance(run, dict) else str(run)


def _mb(b) -> str:
    return "–" if not b else f"{b / 2**20:.1f}"


def render(res: dict, env: dict) -> str:
    lines = ["## Model families (`benchmarks/families.py`)", "", __doc__.split("\n\n", 2)[2].strip(), ""]
    lines += [env_lines(env), ""]
    if res.get("speed"):
        lines += [f"### Speed and size, batch {BATCH} ({_when(res, 'speed')})", ""]
        lines += ["| family (model) | variant | img/s | × vs fp32 eager | weights MB |", "|---|---|---|---|---|"]
        for fam, r in res["speed"].items():
            for i, row in enumerate(r["rows"]):
                size = r["fp32_bytes"] if i == 0 else row.get("bytes")
                who = f"{fam} (`{r['model']}`)" if i == 0 else ""
                lines.append(f"| {who} | {row['variant']} | {row['img_s']:.1f} | ×{row['x']:.2f} | {_mb(size)} |")
            for note in r["notes"]:
                lines.append(f"| | {note} | | | |")
        lines.append("")
    if res.get("accuracy"):
        lines += [f"### PTQ on small configs trained on MNIST-5k (last run {_when(res, 'accuracy')})", ""]
        lines += [
            "| family | fp32 top-1 % | W8A8 top-1 % / agree % | W4A4 top-1 % / agree % | W8A8, `softmax: uniform` |",
            "|---|---|---|---|---|",
        ]
        for fam, r in res["accuracy"].items():
            cells = []
            for k in ("w8a8", "w4a4", "w8a8_uniform_softmax"):
                a = r[k]
                cells.append(a if isinstance(a, str) else f"{100 * a['top1']:.1f} / {100 * a['agree']:.1f}")
            who = f"{fam} (`{r['model']}`, {r['epochs']} ep" + (f", run {r['when']})" if r.get("when") else ")")
            lines.append(f"| {who} | {100 * r['fp32']['top1']:.1f} | {' | '.join(cells)} |")
        lines.append("")
    lines += ["### Figures", "", "| figure | measured | target | met |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(f)} |" for f in figures(res)]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 repeats, 1 training epoch (smoke run)")
    ap.add_argument("--part", default="speed,accuracy", help="comma list of: speed, accuracy")
    ap.add_argument("--families", default=",".join(REAL), help=f"comma list of: {', '.join(REAL)}")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--render-only", action="store_true", help="rebuild the section from the stored results")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    if args.render_only:
        stored = json.loads(RESULTS.read_text())
        write_section("families", render(stored["results"], stored["env"]), args.out)
        return
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = sorted(set(families) - set(REAL))
    if unknown:
        raise SystemExit(f"unknown families {unknown}: use {', '.join(REAL)}")
    env = environment()
    with tempfile.TemporaryDirectory() as tmp:
        for part in [p.strip() for p in args.part.split(",") if p.strip()]:
            if part not in ("speed", "accuracy"):
                raise SystemExit(f"unknown part {part!r}: use speed, accuracy")
            started = time.perf_counter()
            fn = part_speed if part == "speed" else part_accuracy
            fn(args, Path(tmp), families)  # each family's result is stored as it is measured (keep_partial)
            minutes = (time.perf_counter() - started) / 60
            keep_partial(f"{part}_run", "when", f"{environment(probe=False)['date']}, {minutes:.1f} min")
    res = json.loads(RESULTS.read_text())["results"]
    RESULTS.write_text(json.dumps({"env": env, "results": res}, indent=1, default=str) + "\n")
    write_section("families", render(res, env), args.out)


if __name__ == "__main__":
    main()
