"""``vitkit deploy MODEL -o DIR --runtime auto``: the model on the fastest runtime this machine offers within an
accuracy budget (or on the runtime named), with every candidate's figures.

``auto`` measures each candidate runtime (:mod:`vitkit.deploy.auto`) on ``--images`` images of ``--data`` (top-1
drop vs the model itself) and prints the table; ``DIR`` gets ``runtime.json`` and, for an ONNX Runtime winner, its
``.onnx`` file. Bad input — an unknown runtime, no candidate within ``--max-drop`` (the table is printed first), a
runtime this machine or installation cannot run — is one ``error: ...`` line and exit 2; nothing is written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from ..errors import ConfigError
from ._shared import add_arch, load_model


def add_commands(sub) -> None:
    s = sub.add_parser("deploy", help="deploy a model on the fastest runtime within an accuracy budget (auto)")
    s.add_argument("model", help="artifact dir (or any model vitkit.load accepts)")
    s.add_argument("-o", "--out", required=True, help="output directory (runtime.json, the ONNX file if any)")
    s.add_argument("--runtime", default="auto", help="auto, or a runtime: torch-w8a8, ort-int8, ... (vitkit list)")
    s.add_argument("--data", default=None, help="evaluation images (default: the artifact's eval data, else mnist5k)")
    s.add_argument("--split", default="test")
    s.add_argument("--images", type=int, default=256, help="images the candidates are scored on (default 256)")
    s.add_argument("--max-drop", type=float, default=1.0, help="accuracy budget in top-1 points (default 1.0)")
    s.add_argument("--candidates", default=None, help="comma list of runtimes auto tries (default: all)")
    s.add_argument("--no-cache", action="store_true", help="measure again even if this model was measured here")
    add_arch(s)
    s.set_defaults(func=cmd_deploy)


def cmd_deploy(args) -> int:
    import torch

    from ..artifact import recorded_eval_data
    from ..data import iterate_batches, load_dataset
    from ..deploy import RUNTIMES, deploy
    from ..deploy.auto import NoRuntimeInBudget
    from ..ui import console
    from ..validate import check_choice, check_int

    check_choice(args.runtime, "--runtime", RUNTIMES)
    check_int(args.images, "--images", low=1)
    con = console()
    model = load_model(args.model, args.arch).eval()
    data_name = args.data or recorded_eval_data(args.model) or "mnist5k"
    ds = load_dataset(data_name, args.split, model=model)
    batches = list(iterate_batches(ds, 64, limit=args.images))
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([torch.as_tensor(y) for _, y in batches])
    candidates = tuple(c.strip() for c in args.candidates.split(",") if c.strip()) if args.candidates else None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory: pass a directory for -o")
    with tempfile.TemporaryDirectory(prefix=".vitkit-deploy-", dir=out.parent if out.parent.exists() else None) as t:
        staged = Path(t) / "out"
        try:
            with con.status(f"deploying ({args.runtime}): building and measuring on this machine..."):
                runner = deploy(
                    model,
                    staged,
                    runtime=args.runtime,
                    calib=images[:32],
                    example=images[:2],
                    data=(images, labels),
                    max_drop=args.max_drop,
                    candidates=candidates,
                    cache=not args.no_cache,
                )
        except NoRuntimeInBudget as exc:
            print_runtime_choice(exc.choice.to_dict())
            raise
        staged.mkdir(parents=True, exist_ok=True)
        choice = getattr(runner, "choice", None)
        if choice is None:
            record = {"chosen": args.runtime}
            (staged / "runtime.json").write_text(json.dumps(record, indent=1) + "\n")
        out.mkdir(parents=True, exist_ok=True)
        for f in staged.iterdir():  # each file moved in whole (same filesystem): no half-written output
            shutil.move(str(f), out / f.name)
    if choice is not None:
        print_runtime_choice(choice.to_dict())
    con.print(f"deployed on {getattr(runner, 'auto_candidate', None) or args.runtime}; written to {out}")
    return 0


def print_runtime_choice(choice: dict | None) -> None:
    """The candidates ``runtime: auto`` measured (img/s, × vs PyTorch fp32, accuracy drop) and why one won."""
    if not choice or "candidates" not in choice:
        return
    from rich.markup import escape
    from rich.table import Table

    from ..ui import console

    table = Table(title=f"runtime auto: candidates measured on this machine (budget {choice['max_drop']:g} pt)")
    delta = "Δ top-1 pt" if choice.get("metric") == "top-1 drop" else "−disagreement pt"
    for h in ("runtime", "status", "img/s", "× vs torch-fp32", delta):
        table.add_column(h, justify="left" if h in ("runtime", "status") else "right")
    for c in choice["candidates"]:
        name = f"[bold]{c['runtime']} ✓[/bold]" if c["runtime"] == choice.get("chosen") else c["runtime"]
        status = c["status"] + (f": {c['note']}" if c["note"] and c["status"] != "measured" else "")
        num = [f"{c['img_s']:.1f}" if c["img_s"] else "–", f"×{c['speedup']:.2f}" if c["speedup"] else "–"]
        table.add_row(name, escape(status), *num, f"{0.0 - c['drop_pt']:+.2f}" if c["drop_pt"] is not None else "–")
    con = console()
    con.print(table)
    con.print(escape(choice["reason"] + (" (measurements from the cache)" if choice.get("cached") else "")))
