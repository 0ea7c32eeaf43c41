"""Model-merging benchmark on the offline multi-task testbed → the ``merge`` section of BENCHMARKS.md.

    .venv/bin/python benchmarks/merge.py            # 8 tasks (a few CPU minutes on idle cores)
    .venv/bin/python benchmarks/merge.py --quick    # 4 tasks, shorter training

Figures: average accuracy per method vs individual and base; OPCM vs (sequential) task arithmetic over 3 task
orders; greedy vs uniform soup on one task; FW-Merging with and without distractor checkpoints; peak anonymous
memory (RssAnon, sampled) merging 2/4/8 checkpoints streamed from .safetensors vs held in memory; merge times;
streaming vs in-memory bit-identity.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import vitkit  # noqa: E402
from benchmarks import merge_testbed as tb  # noqa: E402


def rss_anon_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def memory_child(n: int, mode: str, folder: str) -> None:
    """Run one TA merge of ``n`` checkpoints in this (fresh) process; print peak RssAnon above the start."""
    from safetensors.torch import load_file

    paths = [str(Path(folder) / f"m{i}.safetensors") for i in range(n)]
    base_path = str(Path(folder) / "base.safetensors")
    start = rss_anon_kb()
    peak = [start]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_anon_kb())
            time.sleep(0.005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    if mode == "stream":
        out = vitkit.merge(paths, vitkit.TaskArithmeticConfig(scaling=0.3), base=base_path)
    else:  # what a module-per-model tool does: every checkpoint materialised in anonymous memory first
        sds = [{k: v.clone() for k, v in load_file(p).items()} for p in paths]
        base = {k: v.clone() for k, v in load_file(base_path).items()}
        out = vitkit.merge(sds, vitkit.TaskArithmeticConfig(scaling=0.3), base=base)
    secs = time.perf_counter() - t0
    peak[0] = max(peak[0], rss_anon_kb())
    stop.set()
    th.join()
    del out
    print(json.dumps({"peak_mib": (peak[0] - start) / 1024, "seconds": secs}))


def memory_figures(quick: bool) -> list[dict]:
    from safetensors.torch import save_file

    arch = "vit_tiny_patch16_224" if quick else "deit_small_patch16_224"
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        model = vitkit.load(arch)
        sd = {k: v.contiguous() for k, v in model.state_dict().items()}
        model_mib = sum(v.numel() * v.element_size() for v in sd.values()) / 2**20
        save_file(sd, str(Path(folder) / "base.safetensors"))
        g = torch.Generator().manual_seed(0)
        for i in range(8):
            save_file(
                {k: v + 1e-3 * torch.randn(v.shape, generator=g) for k, v in sd.items()},
                str(Path(folder) / f"m{i}.safetensors"),
            )
        del model, sd
        for n in (2, 4, 8):
            for mode in ("stream", "memory"):
                res = subprocess.run(
                    [sys.executable, __file__, "--memory-child", str(n), mode, folder],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                rec = json.loads(res.stdout.strip().splitlines()[-1])
                rows.append({"n": n, "mode": mode, "model_mib": model_mib, "arch": arch, **rec})
    return rows


def pleas_figures(quick: bool, threads: int) -> dict:
    """Two testbed-architecture classifiers trained on upright MNIST from *different init seeds*; merge them."""
    from vitkit.data import TensorImageDataset, bundled, input_spec
    from vitkit.merging.pleas import model_for
    from vitkit.training import TrainConfig, train_classifier

    spec = input_spec(None)
    mx, my = bundled.split("mnist5k", "all")
    train = TensorImageDataset(mx[:2000], my[:2000], spec, name="pleas/train")
    test = TensorImageDataset(mx[4000:5000], my[4000:5000], spec, name="pleas/test")
    arch = dict(tb.ARCH, num_classes=10)

    def build(seed):
        torch.manual_seed(seed)
        return vitkit.load("vit_tiny_patch16_224", **arch)

    def acc(m):
        m.eval()
        with torch.no_grad():
            return float((m(test.transform(test.images)).argmax(-1) == test.labels).float().mean())

    models, secs = [], 0.0
    for seed in (0, 1):
        m = build(seed)
        cfg = TrainConfig(epochs=4 if quick else 8, lr=2e-3, weight_decay=0.05, seed=seed, threads=threads)
        t0 = time.perf_counter()
        train_classifier(m, train, cfg)
        secs += time.perf_counter() - t0
        models.append(m.eval())
    sds = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in models]
    naive = build(0)
    naive.load_state_dict(vitkit.merge(sds, vitkit.AverageConfig()))
    calib = train.transform(train.images[:512])  # unlabeled
    hid = models[0].blocks[0].mlp.fc1.out_features
    rows = [
        ("model A (seed 0)", acc(models[0]), ""),
        ("model B (seed 1)", acc(models[1]), ""),
        ("naive average (no alignment)", acc(naive), ""),
    ]
    for label, cfg in (
        ("permute + average (no least squares)", vitkit.PLeaSConfig(refit=False)),
        (f"PLeaS, MLP width {hid} (same)", vitkit.PLeaSConfig()),
        (f"PLeaS, MLP width {hid // 2} (½)", vitkit.PLeaSConfig(mlp_width=hid // 2)),
        (f"PLeaS, MLP width {2 * hid} (2×, every neuron kept)", vitkit.PLeaSConfig(mlp_width=2 * hid)),
    ):
        info: dict = {}
        t0 = time.perf_counter()
        sd = vitkit.merge(sds, cfg, model=models[0], calib=calib, info=info)
        rows.append((label, acc(model_for(models[0], sd)), f"{time.perf_counter() - t0:.1f} s"))
    return {"rows": rows, "train_s": secs, "epochs": 4 if quick else 8}


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny training, to check the script runs (numbers meaningless)")
    p.add_argument("--memory-child", nargs=3, default=None)
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    p.add_argument("--threads", type=int, default=2, help="torch threads (the testbed is deterministic per count)")
    p.add_argument("--cache", default=None, help="folder to cache the trained testbed weights in (safetensors)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory rows (accuracy-only run)")
    p.add_argument("--contended", action="store_true", help="label timings as taken on a shared CPU")
    args = p.parse_args()
    if args.memory_child:
        n, mode, folder = args.memory_child
        memory_child(int(n), mode, folder)
        return
    torch.set_num_threads(args.threads)
    from vitkit.bench import environment
    from vitkit.bench.record import env_lines, write_section

    env = environment()
    cfg = tb.quick_config() if args.quick or args.smoke else tb.TestbedConfig()
    cfg = dataclasses.replace(cfg, threads=args.threads)
    if args.smoke:
        cfg = dataclasses.replace(cfg, pretrain_epochs=1, finetune_epochs=1, n_task_train=200, n_test=200)
    bed = tb.build_testbed(cfg, cache_dir=args.cache)
    tasks = list(cfg.tasks)
    fts = [bed.finetuned[t] for t in tasks]
    base = bed.base
    rows: list[tuple[str, float, float, str]] = []  # (method, avg acc, seconds, notes)
    rows.append(("pretrained base", bed.average_accuracy(base), 0.0, "random per-task heads"))
    rows.append(("individual fine-tuned", bed.individual_accuracy(), 0.0, "each model on its own task"))

    def run(name, cfg_, notes="", **kw):
        sd, secs = timed(lambda: vitkit.merge(fts, cfg_, **kw))
        acc = bed.average_accuracy(sd)
        rows.append((name, acc, secs, notes))
        return acc, sd

    acc_avg, _ = run("simple average", vitkit.AverageConfig())
    acc_ta, sd_ta = run("task arithmetic λ=0.3", vitkit.TaskArithmeticConfig(scaling=0.3), base=base)
    lam_scores = {
        lam: bed.average_accuracy(vitkit.merge(fts, vitkit.TaskArithmeticConfig(scaling=lam), base=base), "val")
        for lam in (0.2, 0.3, 0.4, 0.5, 0.6)
    }
    lam_best = max(lam_scores, key=lam_scores.get)
    run(f"task arithmetic λ={lam_best} (tuned on val)", vitkit.TaskArithmeticConfig(scaling=lam_best), base=base)
    run("TIES top 20%, disjoint mean, λ=1", vitkit.TIESConfig(density=0.2, scaling=1.0), base=base)
    run("TIES top 20%, sum, λ=0.3", vitkit.TIESConfig(density=0.2, scaling=0.3, aggregate="sum"), base=base)
    run("DARE p=0.5 + TA λ=0.3", vitkit.DAREConfig(drop=0.5, scaling=0.3), base=base)
    run("DARE p=0.5 + TIES λ=1", vitkit.DAREConfig(drop=0.5, scaling=1.0, combine="ties"), base=base)
    run("RegMean α=0.95 (64 imgs/task)", vitkit.RegMeanConfig(), model=bed.model, calib=bed.calib(64))
    run("RegMean α=0.95 (256 imgs/task)", vitkit.RegMeanConfig(), model=bed.model, calib=bed.calib(256))
    run(
        "RegMean α=0.95 + task arithmetic λ=0.3 for non-linear tensors",
        vitkit.RegMeanConfig(others="task_arithmetic", scaling=0.3),
        "extension",
        base=base,
        model=bed.model,
        calib=bed.calib(256),
    )
    fw_info: dict = {}
    run(
        "FW-Merging (10 iters, val objective)",
        vitkit.FWMergingConfig(max_iters=10),
        base=base,
        model=bed.model,
        objective=bed.objective(64),
        info=fw_info,
    )
    s_n = round(0.3 * len(tasks), 2)
    for label, fcfg in (
        (f"FW-Merging, vertices θ0 + {s_n}·τ (hull reaches TA λ=0.3)", vitkit.FWMergingConfig(vertex_scaling=s_n)),
        ("FW-Merging, per-tensor LMO", vitkit.FWMergingConfig(granularity="layer")),
        (
            f"FW-Merging, per-tensor LMO, vertices θ0 + {s_n}·τ",
            vitkit.FWMergingConfig(granularity="layer", vertex_scaling=s_n),
        ),
    ):
        run(label, fcfg, base=base, model=bed.model, objective=bed.objective(64))

    # order robustness: OPCM vs sequential task arithmetic over 3 orders
    g = torch.Generator().manual_seed(123)
    orders = [list(range(len(tasks)))] + [torch.randperm(len(tasks), generator=g).tolist() for _ in range(2)]
    opcm_accs, ta_accs, opcm_secs = [], [], []
    for order in orders:
        sd, secs = timed(lambda o=order: vitkit.merge([fts[i] for i in o], vitkit.OPCMConfig(alpha=0.5), base=base))
        opcm_secs.append(secs)
        opcm_accs.append(bed.average_accuracy(sd))
        ta = vitkit.merge([fts[i] for i in order], vitkit.TaskArithmeticConfig(scaling=0.3), base=base)
        ta_accs.append(bed.average_accuracy(ta))
    rows.append(("OPCM α=0.5 (order 1 of 3)", opcm_accs[0], statistics.median(opcm_secs), "continual, constant memory"))

    # greedy vs uniform soup, evaluated on one task (pool = all task models)
    t0 = tasks[0]
    soup_info: dict = {}
    greedy = vitkit.merge(
        fts,
        vitkit.GreedySoupConfig(),
        model=bed.model,
        evaluate=lambda m: bed.accuracy(m.state_dict(), t0, "val"),
        info=soup_info,
    )
    uniform = vitkit.merge(fts, vitkit.AverageConfig())
    greedy_acc, uniform_acc = bed.accuracy(greedy, t0), bed.accuracy(uniform, t0)

    # FW-Merging with distractors: objective on half of the tasks; pool = their models (+ the others + noise)
    half = max(2, len(tasks) // 2)
    rel = tasks[:half]
    sub = tb.Testbed(
        dataclasses.replace(cfg, tasks=tuple(rel)), base, bed.finetuned, bed.heads, bed.train, bed.val, bed.test
    )
    gen = torch.Generator().manual_seed(7)
    noise = []
    for _ in range(2):
        noise.append(
            {
                k: v + 0.05 * v.std() * torch.randn(v.shape, generator=gen) if v.numel() > 1 else v.clone()
                for k, v in base.items()
            }
        )
    pool_rel = [bed.finetuned[t] for t in rel]
    pool_all = pool_rel + [bed.finetuned[t] for t in tasks[half:]] + noise
    fw_cfg = vitkit.FWMergingConfig(max_iters=10)
    info_rel, info_all = {}, {}
    fw_rel = vitkit.merge(pool_rel, fw_cfg, base=base, model=bed.model, objective=sub.objective(64), info=info_rel)
    fw_all = vitkit.merge(pool_all, fw_cfg, base=base, model=bed.model, objective=sub.objective(64), info=info_all)
    acc_fw_rel, acc_fw_all = sub.average_accuracy(fw_rel), sub.average_accuracy(fw_all)
    acc_ta_rel = sub.average_accuracy(vitkit.merge(pool_rel, vitkit.TaskArithmeticConfig(scaling=0.3), base=base))
    acc_ta_all = sub.average_accuracy(vitkit.merge(pool_all, vitkit.TaskArithmeticConfig(scaling=0.3), base=base))

    # streaming vs in-memory bit identity
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i, sd in enumerate(fts):
            paths.append(str(Path(folder) / f"{i}.safetensors"))
            save_file(sd, paths[-1])
        save_file(base, str(Path(folder) / "base.safetensors"))
        streamed = vitkit.merge(
            paths, vitkit.TaskArithmeticConfig(scaling=0.3), base=str(Path(folder) / "base.safetensors")
        )
    max_diff = max(float((streamed[k] - sd_ta[k]).abs().max()) for k in sd_ta)

    mem = [] if args.no_memory else memory_figures(args.quick)
    pleas = pleas_figures(args.quick or args.smoke, args.threads)

    # -- markdown --------------------------------------------------------------------------------------------
    n_t = len(tasks)
    tnote = ", contended (rerun quietly)" if args.contended else ""
    lines = [
        "## Model merging (`benchmarks/merge.py" + (" --quick" if args.quick else "") + "`)",
        "",
        f"Offline testbed (`benchmarks/merge_testbed.py`): tiny timm ViT (28×28, patch 7, width 96, depth 6) "
        f"pretrained on upright MNIST, fine-tuned on {n_t} derived tasks ({', '.join(tasks)}) with fixed random frozen "
        f"heads; backbones merged, every merge scored with each task's head on its test split. "
        f"Pretraining {bed.seconds['pretrain']:.0f} s, fine-tuning {bed.seconds['finetune']:.0f} s on this machine "
        f"(torch threads: {args.threads}; nan = weights from the --cache).",
        "",
        f"| method | avg acc over {n_t} tasks (%) | merge time (s){tnote} | notes |",
        "|---|---|---|---|",
    ]
    for name, acc, secs, notes in rows:
        lines.append(f"| {name} | {100 * acc:.1f} | {secs:.2f} | {notes} |")
    mean_o, sd_o = statistics.mean(opcm_accs), statistics.pstdev(opcm_accs)
    mean_t, sd_t = statistics.mean(ta_accs), statistics.pstdev(ta_accs)
    lines += [
        "",
        f"TA λ on validation: {', '.join(f'{k}: {100 * v:.1f}' for k, v in lam_scores.items())}. "
        f"FW-Merging picked models {fw_info.get('selected')}.",
        "",
        "**Order robustness** (3 task orders, final model):",
        "",
        "| method | mean ± std (%) | max − min (pt) | per order |",
        "|---|---|---|---|",
        f"| OPCM α=0.5 | {100 * mean_o:.1f} ± {100 * sd_o:.2f} | {100 * (max(opcm_accs) - min(opcm_accs)):.1f} | "
        f"{', '.join(f'{100 * a:.1f}' for a in opcm_accs)} |",
        f"| sequential task arithmetic λ=0.3 | {100 * mean_t:.1f} ± {100 * sd_t:.2f} | "
        f"{100 * (max(ta_accs) - min(ta_accs)):.1f} | {', '.join(f'{100 * a:.1f}' for a in ta_accs)} |",
        "",
        "Sequential TA's *final* model is order-independent by construction (a sum), so its spread is float rounding;",
        "OPCM's spread is the real order sensitivity of the projection.",
        "",
        f"**Greedy vs uniform soup** on task `{t0}` (pool: all {n_t} task models, greedy scored on `{t0}` val): "
        f"greedy {100 * greedy_acc:.1f}% (ingredients {soup_info.get('ingredients')}) vs uniform "
        f"{100 * uniform_acc:.1f}%.",
        "",
        f"**FW-Merging with distractors** (objective on {', '.join(rel)}; avg acc over those tasks): "
        f"{len(pool_rel)} relevant models {100 * acc_fw_rel:.1f}% (picked {info_rel.get('selected')}); "
        f"+ {len(pool_all) - len(pool_rel)} distractors (other tasks' models + 2 noise checkpoints) "
        f"{100 * acc_fw_all:.1f}% (picked {info_all.get('selected')}). Task arithmetic λ=0.3 on the same pools: "
        f"{100 * acc_ta_rel:.1f}% → {100 * acc_ta_all:.1f}%.",
        "",
        f"**Streaming vs in-memory** task arithmetic: max |difference| = {max_diff:g} (bit-identical when 0).",
        "",
        f"**PLeaS across different bases**: two classifiers of the testbed architecture trained on upright MNIST "
        f"(2000 images, {pleas['epochs']} epochs) from *different init seeds* ({pleas['train_s']:.0f} s); merged "
        "with 512 unlabeled training images; MNIST test accuracy:",
        "",
        f"| model | test acc (%) | merge time{tnote} |",
        "|---|---|---|",
        *[f"| {name} | {100 * a:.1f} | {t} |" for name, a, t in pleas["rows"]],
        "",
    ]
    if mem:
        lines += [
            f"**Peak anonymous memory** (RssAnon sampled every 5 ms, above the process's start), "
            "task arithmetic over N "
            f"`{mem[0]['arch']}` checkpoints ({mem[0]['model_mib']:.0f} MiB each, fp32):",
            "",
            "| N | streamed from .safetensors (MiB) | all in memory (MiB) | time streamed / in memory (s) |",
            "|---|---|---|---|",
        ]
        for n in (2, 4, 8):
            s = next(r for r in mem if r["n"] == n and r["mode"] == "stream")
            m = next(r for r in mem if r["n"] == n and r["mode"] == "memory")
            lines.append(
                f"| {n} | {s['peak_mib']:.0f} | {m['peak_mib']:.0f} | {s['seconds']:.2f} / {m['seconds']:.2f} |"
            )
    else:
        lines += ["Memory rows: not measured in this run (`--no-memory`); see the previous quiet run.", ""]
    lines += ["", "Environment:", "", env_lines(env)]
    write_section("merge", "\n".join(lines), args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
