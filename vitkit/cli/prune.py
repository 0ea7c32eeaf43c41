"""``vitkit prune MODEL --target macs --ratio 0.5 --importance hessian --data mnist5k -o out/``.

Prunes heads / MLP neurons (/ blocks) to the target, optionally recovers by soft-KD from the unpruned model
(``--distill-epochs N``), evaluates top-1 on the test split before and after, and writes a loadable artifact
(``recipe.resolved.yaml`` holds the pruned structure; ``vitkit.load(out)`` rebuilds it). ``--dry-run`` prints
which heads / how many neurons would go and writes nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..errors import ConfigError
from ._shared import add_arch, load_model

_log = logging.getLogger(__name__)


def _ratio(text: str) -> float:
    import argparse

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratio must be a number in [0, 1), got {text!r}") from None
    return v


def add_commands(sub) -> None:
    s = sub.add_parser("prune", help="structured pruning (heads, MLP neurons, blocks) + optional KD recovery")
    s.add_argument("model", help="timm name, preset, checkpoint file or artifact dir")
    s.add_argument("--target", default="macs", help="what ratio is a fraction of: macs | params | latency")
    s.add_argument("--ratio", type=_ratio, default=0.5, help="fraction of the target to remove, in [0, 1)")
    s.add_argument("--importance", default="hessian", help="l1 | l2 | taylor | hessian | dimap")
    s.add_argument("--groups", default="heads,mlp", help="comma list of heads, mlp, blocks")
    s.add_argument("--allocation", default="global", help="global | uniform")
    s.add_argument("--data", default="mnist5k", help="dataset for calibration, recovery and evaluation")
    s.add_argument("--calib-images", type=int, default=64, help="calibration images for taylor/hessian")
    s.add_argument("--distill-epochs", type=int, default=0, help="soft-KD recovery epochs from the unpruned model")
    s.add_argument("--distill-lr", type=float, default=1e-3)
    s.add_argument("--distill-limit", type=int, default=None, help="training images per recovery epoch")
    s.add_argument("--no-eval", action="store_true", help="skip the test-split evaluation")
    s.add_argument("-o", "--out", default=None, help="artifact directory to write (required unless --dry-run)")
    s.add_argument("--dry-run", action="store_true", help="show what would be pruned; change and write nothing")
    s.add_argument("--json", action="store_true", help="print one JSON summary")
    add_arch(s)
    s.set_defaults(func=cmd_prune)


def _configs(args):
    from ..distill import DistillConfig
    from ..prune.config import PruneConfig

    groups = tuple(g.strip() for g in str(args.groups).split(",") if g.strip())
    prune = PruneConfig(
        target=args.target,
        ratio=args.ratio,
        importance=args.importance,
        groups=groups,
        allocation=args.allocation,
        calib_images=args.calib_images,
    )
    if args.distill_epochs < 0:
        raise ConfigError(f"--distill-epochs must be >= 0, got {args.distill_epochs}")
    steps = [prune]
    if args.distill_epochs:
        steps.append(
            DistillConfig(
                teacher="original",
                data=args.data,
                limit=args.distill_limit,
                train=dict(epochs=args.distill_epochs, lr=args.distill_lr, warmup_epochs=0.5),
            )
        )
    return steps


def cmd_prune(args) -> int:
    import contextlib
    import copy

    from ..api import apply_
    from ..artifact import is_artifact, save_artifact
    from ..data import calibration_set, load_dataset
    from ..distill.trainer import progress_to
    from ..ops.pruning import DATA_FREE
    from ..training import evaluate_top1
    from ..ui import console, progress

    steps = _configs(args)  # validates every option before anything is loaded
    if not args.dry_run:
        if not args.out:
            raise ConfigError("vitkit prune needs -o OUT (the artifact directory to write), or --dry-run")
        out = Path(args.out)
        if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_artifact(out))):
            raise ConfigError(f"output {out} exists and is not a vitkit artifact: choose another output path")
    con = console()
    original = load_model(args.model, args.arch)
    model = copy.deepcopy(original)
    calib = None
    if steps[0].importance not in DATA_FREE:
        calib = calibration_set(load_dataset(args.data, "train", model=model), args.calib_images, seed=0)
    # --json keeps stdout to the one JSON line, so the bar is only drawn for humans
    with contextlib.nullcontext() if args.json else progress() as prog:
        tasks: dict = {}

        def on_step(s: dict) -> None:
            stage = s.get("stage", "kd")
            if stage not in tasks:
                tasks[stage] = prog.add_task(f"distilling ({stage})", total=s["total"], info="")
            prog.update(tasks[stage], completed=s["step"], info=f"epoch {s['epoch'] + 1} loss {s['loss']:.4f}")

        with progress_to(None if prog is None else on_step):
            applied = apply_(model, steps, calib=calib, dry_run=args.dry_run)
    decisions = applied.steps[0].decisions
    summary = {
        "model": str(args.model),
        "dry_run": bool(args.dry_run),
        "prune": decisions["summary"],
        "pruned_heads": decisions["pruned_heads"],
        "pruned_mlp_count": decisions["pruned_mlp_count"],
        "pruned_blocks": decisions["pruned_blocks"],
        "macs": decisions["macs"],
        "params": decisions["params"],
    }
    if len(applied.steps) > 1:
        summary["distill"] = applied.steps[1].decisions.get("summary")
    if not args.dry_run and not args.no_eval:
        test = load_dataset(args.data, "test", model=original)
        summary["top1_before"] = evaluate_top1(original, test)
        summary["top1_after"] = evaluate_top1(model, test)
    if not args.dry_run:
        from ..recipe import get_step_name

        recipe = {"model": str(args.model), "steps": [{get_step_name(c): c.to_dict()} for c in steps]}
        save_artifact(model, recipe, {"prune": summary}, args.out, title=f"vitkit prune: {args.model}")
        summary["out"] = str(args.out)
    if args.json:
        print(json.dumps(summary, default=str))
        return 0
    con.print(("(dry run) " if args.dry_run else "") + decisions["summary"], markup=False)
    for name, heads in decisions["pruned_heads"].items():
        con.print(f"  {name}: drop heads {heads}, {decisions['pruned_mlp_count'].get(name, 0)} MLP neurons")
    for name, n in decisions["pruned_mlp_count"].items():
        if name not in decisions["pruned_heads"]:
            con.print(f"  {name}: drop {n} MLP neurons")
    for name in decisions["pruned_blocks"]:
        con.print(f"  {name}: removed")
    if "distill" in summary:
        con.print(summary["distill"])
    if "top1_after" in summary:
        con.print(f"test top-1 {100 * summary['top1_before']:.2f}% → {100 * summary['top1_after']:.2f}%")
    if not args.dry_run:
        con.print(f"artifact written to {args.out}")
    return 0
