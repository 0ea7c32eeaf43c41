"""``vitkit early-exit MODEL -o OUT``: add exit heads, train them on a frozen backbone, calibrate, save.

Writes a loadable artifact (exit heads in ``model.safetensors``, exits and the calibrated threshold in
``recipe.resolved.yaml``) whose ``report.json`` holds the test-set accuracy with/without exiting and the
exit histogram.
"""

from __future__ import annotations

import logging

from ..errors import ConfigError
from ._shared import add_arch, load_model

_log = logging.getLogger(__name__)


def add_commands(sub) -> None:
    s = sub.add_parser("early-exit", help="add LGViT-style early exits: train heads (frozen backbone), calibrate τ")
    s.add_argument("model", help="timm name, checkpoint or artifact dir (e.g. the reference model)")
    s.add_argument("-o", "--out", required=True, help="output artifact directory")
    s.add_argument("--exits", default=None, help="block indices, comma-separated (default: upper two thirds)")
    s.add_argument("--head", default="linear", help="linear | attention-pool (or one per exit, comma-separated)")
    s.add_argument("--criterion", default="confidence", help="confidence | entropy")
    s.add_argument("--max-drop", type=float, default=1.0, help="top-1 drop budget in points for calibration")
    s.add_argument(
        "--calibration", default="single", choices=["single", "per-exit"], help="one τ, or cost-aware τ per exit"
    )
    s.add_argument("--cost", default="macs", choices=["macs", "latency"], help="what per-exit calibration minimises")
    s.add_argument("--epochs", type=int, default=3, help="KD epochs for the exit heads (0 = untrained)")
    s.add_argument("--data", default="mnist5k", help="dataset: mnist5k | digits | imagefolder:/path")
    add_arch(s)
    s.set_defaults(func=cmd_early_exit)


def _ints(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--exits must be comma-separated block indices like 1,2,3, got {text!r}") from None


def cmd_early_exit(args) -> int:
    from ..api import apply_
    from ..artifact import save_artifact
    from ..data import load_dataset
    from ..early_exit.config import EarlyExitConfig
    from ..early_exit.train import evaluate_exits
    from ..ui import console, progress

    heads = args.head.split(",") if "," in args.head else args.head
    cfg = EarlyExitConfig(
        exits=_ints(args.exits),
        head=heads,
        criterion=args.criterion,
        max_drop=args.max_drop,
        calibration=args.calibration,
        cost=args.cost,
        data=args.data,
        train=dict(epochs=args.epochs),
    )
    model = load_model(args.model, args.arch)
    con = console()
    with progress() as prog:
        task = prog.add_task("training exit heads + calibrating", total=None, info="")
        report = apply_(model, cfg)
        prog.update(task, total=1, completed=1)
    dec = report.steps[-1].decisions
    test = load_dataset(args.data, "test", model=model)
    ev = evaluate_exits(model, test)
    save_artifact(model, {"early_exit": cfg.to_dict()}, {"early_exit": dec, "test": ev}, args.out)
    con.print(dec["summary"])
    con.print(
        f"test top-1 {100 * ev['top1_full']:.2f}% → {100 * ev['top1_exit']:.2f}% with exits "
        f"({-ev['drop_pts']:+.2f} pts), analytic MACs ratio {ev['macs_ratio']:.2f}×"
    )
    con.print("exit histogram (test): " + ", ".join(f"{k}: {v}" for k, v in ev["histogram"].items()))
    con.print(f"artifact → {args.out}")
    return 0
