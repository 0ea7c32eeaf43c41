"""The core commands (list, train, eval, bench, run, export, demo) and the parser that adds each family's.

Bad input exits with code 2 and a one-line ``error: ...`` (add ``--debug`` for the traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..errors import VitkitError
from ..ui import EXIT_BAD_INPUT, console, import_modules, parse_arch, progress
from . import adapt, convert, deploy, early_exit, merge, prune, quant, search, zero_shot
from ._shared import add_arch, load_model
from .deploy import print_runtime_choice

FAMILY_COMMANDS = (deploy, merge, prune, quant, adapt, early_exit, search, zero_shot, convert)


def _print_table(variants: list[dict], title: str = "") -> None:
    from rich.table import Table

    from ..report import table_rows

    header, rows = table_rows(variants)
    table = Table(title=title or None)
    for h in header:
        table.add_column(h, justify="left" if h == "variant" else "right")
    for r in rows:
        table.add_row(*r)
    console().print(table)


# -- commands -------------------------------------------------------------------------------------------
def cmd_list(args) -> int:
    from ..data import DATASETS
    from ..models import PRESETS
    from ..registry import list_merge_methods, list_transforms

    con = console()
    specs = list_transforms(args.pattern)
    con.print("[bold]transforms[/bold]" + ("" if specs else " (none match)"))
    for s in specs:
        con.print(f"  {s.name:<16} {s.kind:<10} {s.config_cls.__name__:<22} {s.paper}")
    merges = list_merge_methods(args.pattern)
    title = "[bold]merge methods[/bold] (vitkit merge, or the `merge` step of a recipe)"
    con.print(title + ("" if merges else " (none match)"))
    for s in merges:
        needs = ", ".join(("base" if s.needs_base else "no base",) + s.needs)
        con.print(f"  {s.name:<16} {needs:<20} {s.config_cls.__name__:<22} {s.paper}")
    from ..deploy.auto import CANDIDATES

    con.print("[bold]runtimes[/bold] (vitkit deploy --runtime, recipe deploy.runtime; auto measures the candidates)")
    con.print(f"  {'auto':<16} the fastest candidate measured on this machine within --max-drop / deploy.max_drop")
    for name, (what, _) in CANDIDATES.items():
        con.print(f"  {name:<16} {what}")
    con.print("[bold]presets[/bold]")
    for name, p in PRESETS.items():
        con.print(f"  {name:<20} {p['doc']}")
    con.print("[bold]datasets[/bold]")
    for name, doc in DATASETS.items():
        con.print(f"  {name:<20} {doc}")
    return 0


def cmd_train(args) -> int:
    from ..reference import train_reference

    with progress() as prog:
        task = prog.add_task("training", total=None, info="")

        def on_step(s: dict) -> None:
            prog.update(
                task,
                total=s["total"],
                completed=s["step"],
                info=f"epoch {s['epoch'] + 1} loss {s['loss']:.3f} acc {100 * s['train_acc']:.1f}%",
            )

        out, summary = train_reference(
            args.out,
            data=args.data,
            preset=args.preset,
            epochs=args.epochs,
            seed=args.seed,
            threads=args.threads,
            progress=on_step,
        )
    console().print(
        f"test top-1 {100 * summary['test_top1']:.2f}% after {summary['train_seconds']:.0f} s → artifact {out}"
    )
    return 0


def cmd_eval(args) -> int:
    from ..bench.metrics import classify, topk_accuracy
    from ..data import load_dataset

    model = load_model(args.model, args.arch)
    if args.zero_shot:  # image-embedding model → classifier over the file's class prompts
        from ..models.zero_shot import read_class_embeddings, zero_shot_head

        zero_shot_head(model, read_class_embeddings(args.zero_shot)[0])
    data = load_dataset(args.data, args.split, model=model)
    logits, labels = classify(model, data, limit=args.limit)
    result = {
        "model": str(args.model),
        "zero_shot": args.zero_shot,
        "data": args.data,
        "split": args.split,
        "images": int(labels.numel()),
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, 5),
    }
    if args.json:
        print(json.dumps(result))
    else:
        console().print(
            f"{args.model} on {args.data}/{args.split} ({result['images']} images): "
            f"top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%"
        )
    return 0


def cmd_bench(args) -> int:
    from ..artifact import check_output_path, save_artifact
    from ..bench import benchmark
    from ..data import load_dataset

    if args.out:
        check_output_path(args.out)  # refuse an unusable -o before the timing runs
    model = load_model(args.model, args.arch)
    baseline = load_model(args.baseline, args.arch) if args.baseline else None
    data = load_dataset(args.data, args.split, model=model) if args.data else None
    with console().status("benchmarking (interleaved, median of repeats)..."):
        result = benchmark(
            model,
            data,
            baseline,
            name=Path(str(args.model)).name,
            batch_sizes=tuple(args.batch_sizes),
            threads=args.threads,
            repeats=args.repeats,
            eval_limit=args.limit,
        )
    rep = result.to_dict()
    if args.out:
        save_artifact(model, {"bench": vars_plain(args)}, rep, args.out, title=f"vitkit bench: {args.model}")
    if args.json:
        print(json.dumps(rep, default=str))
    else:
        _print_table(rep["variants"], title=f"bench on {args.data or 'random input'}")
    return 0


def cmd_run(args) -> int:
    from ..recipe import read_recipe, run_recipe

    recipe = read_recipe(args.recipe)
    if args.arch:  # --arch overrides the recipe's arch: (recorded in the artifact's recipe and model record)
        import dataclasses

        recipe = dataclasses.replace(recipe, arch=parse_arch(args.arch))
    con = console()
    if args.dry_run:
        _, planned = run_recipe(recipe, None, dry_run=True)
        con.print(str(planned))
        return 0
    if not args.out:
        raise VitkitError("vitkit run needs -o OUT (the artifact directory to write)")
    with con.status("running recipe...") as status:
        _, report = run_recipe(recipe, args.out, progress=lambda m: status.update(m + "..."))
    _print_table(report["variants"], title=f"{recipe.label} on {recipe.model}")
    print_runtime_choice(report.get("runtime"))
    con.print(f"artifact + report written to {args.out}")
    return 0


def cmd_demo(args) -> int:
    from ..demo import run_demo

    con = console()
    with progress() as prog:
        tasks: list = []  # the bar appears only if the reference model has to be trained

        def on_step(s: dict) -> None:
            if not tasks:
                tasks.append(prog.add_task("training the reference model", total=s["total"], info=""))
            prog.update(tasks[0], completed=s["step"], info=f"epoch {s['epoch'] + 1} loss {s['loss']:.3f}")

        report, out = run_demo(args.out, retrain=args.retrain, progress=on_step, say=lambda m: con.log(m))
    _print_table(report["variants"], title="vitkit demo: reference ViT on MNIST-5k test")
    print_runtime_choice(report.get("runtime"))
    con.print(f"artifact (weights, runtime.json), report.md, report.html, report.json and plot written to {out}")
    return 0


def cmd_export(args) -> int:
    from .export_hf import check_format, cmd_export_hf

    if check_format(args.format) == "hf":
        return cmd_export_hf(args)
    from ..artifact import recorded_eval_data
    from ..data import load_dataset
    from ..deploy import export_model

    con = console()
    model = load_model(args.model, args.arch)
    data_name = args.data or recorded_eval_data(args.model)
    data = load_dataset(data_name, args.split, model=model) if data_name else None
    if data is None:
        from ..deploy.export import RANDOM_PARITY

        con.print(f"[yellow]{RANDOM_PARITY} (none given or recorded in the artifact)[/yellow]")
    out = Path(args.out or f"{str(args.model).rstrip('/')}-onnx")
    with con.status("exporting, checking parity, benchmarking ONNX Runtime vs PyTorch..."):
        res = export_model(
            model,
            out,
            data=data,
            images=args.images,
            fmt=args.format,
            quant=args.quant,
            opset=args.opset,
            bench=not args.no_bench,
        )
    con.print(
        f"{res.path} ({res.mode}): parity on {res.images} {'real' if data is not None else 'random'} images — "
        f"max |diff| {res.max_abs_diff:.3g}, top-1 agreement {100 * res.agreement:.2f}%"
    )
    if res.bench:
        _print_table(res.bench["variants"], title="ONNX Runtime vs PyTorch")
    con.print(f"export report written to {out / 'export_report.md'}")
    return 0


def vars_plain(args) -> dict:
    return {k: v for k, v in vars(args).items() if k != "func" and isinstance(v, str | int | float | list | type(None))}


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes must be integers like 1,16, got {text!r}") from None
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive, got {text!r}")
    return sizes


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's bad-input contract: one ``error: ...`` line (usage is one --help away), exit 2."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vitkit", description="Make Vision Transformers faster, smaller, combinable.")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import user code first (module name or .py path; repeatable): register timm models, vitkit presets",
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="list transforms, presets and datasets")
    s.add_argument("pattern", nargs="?", default="*", help="glob over transform names, e.g. 'tome*'")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("train", help="train the reference ViT on bundled data and save an artifact")
    s.add_argument("--data", default="mnist5k")
    s.add_argument("--out", required=True, help="artifact directory to write")
    s.add_argument("--preset", default="vitkit_mnist_tiny")
    s.add_argument("--epochs", type=int, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int, default=2)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval", help="top-1/top-5 of a model on a dataset split")
    s.add_argument("model", help="timm name, preset, checkpoint file or artifact dir")
    s.add_argument("--data", default="mnist5k")
    s.add_argument("--split", default="test")
    add_arch(s)
    s.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--zero-shot", default=None, metavar="EMB", help="class-prompt embeddings: CLIP zero-shot top-1")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("bench", help="accuracy, agreement, throughput, latency, memory, size, MACs")
    s.add_argument("model")
    s.add_argument("--baseline", default=None, help="model to compare against, timed interleaved")
    s.add_argument("--data", default=None, help="dataset for accuracy (default: timing on random input)")
    s.add_argument("--split", default="test")
    add_arch(s)
    s.add_argument("--batch-sizes", type=_batch_sizes, default=[1, 16])
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--repeats", type=int, default=7)
    s.add_argument("--limit", type=int, default=None)
    s.add_argument("-o", "--out", default=None, help="also write an artifact + report here")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("run", help="run a recipe YAML: transforms → artifact + report")
    s.add_argument("recipe")
    s.add_argument("-o", "--out", default=None)
    s.add_argument("--dry-run", action="store_true", help="show the decisions without changing anything")
    add_arch(s, "overrides the recipe's arch:")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser(
        "export", help="export an artifact or model to ONNX (parity, ONNX Runtime benchmark) or a transformers folder"
    )
    s.add_argument("model", help="artifact dir (or any model vitkit.load accepts)")
    s.add_argument("--format", default="onnx", help="onnx, or hf: a transformers folder with a model card")
    s.add_argument("-o", "--out", default=None, help="output directory (default: <model>-onnx or <model>-hf)")
    s.add_argument("--data", default=None, help="images for the parity check (default: the artifact's eval data)")
    s.add_argument("--split", default="test")
    s.add_argument("--images", type=int, default=128, help="images in the parity check")
    s.add_argument("--quant", default="auto", help="quantized models: auto|qdq|fake|dynamic|float")
    s.add_argument("--opset", type=int, default=17)
    add_arch(s)
    s.add_argument("--no-bench", action="store_true", help="skip the ONNX Runtime vs PyTorch timing")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("demo", help="train (cached) the reference model, run the default recipe, print the report")
    s.add_argument("--out", default="vitkit-demo")
    s.add_argument("--retrain", action="store_true", help="ignore the cached reference model")
    s.set_defaults(func=cmd_demo)
    for family in FAMILY_COMMANDS:  # each method family's sub-commands (`vitkit merge`, `vitkit prune`, ...)
        family.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        import_modules(args.imports)  # before anything is built: user code registers architectures / presets
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (VitkitError, FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}".splitlines()[0], file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
