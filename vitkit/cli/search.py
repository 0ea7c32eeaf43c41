"""``vitkit search``: budgeted Pareto search over composed recipes (prune × PTQ × ToMe × runtime).

Exit codes: 0 = a candidate within ``--max-drop`` was found and written to ``OUT/best``; 1 = none was (the closest
candidates are printed, the front is still written); 2 = bad input (one ``error: ...`` line).
"""

from __future__ import annotations

EXIT_NO_CANDIDATE = 1


def add_commands(sub) -> None:
    s = sub.add_parser("search", help="budgeted Pareto search over composed recipes (successive halving)")
    s.add_argument("--model", required=True, help="timm name, preset, checkpoint file or artifact dir")
    s.add_argument("--data", default="mnist5k", help="dataset with train/val/test splits (val selects, test reports)")
    s.add_argument("--max-drop", type=float, default=1.0, help="largest allowed top-1 drop, in points (default 1.0)")
    s.add_argument("--objective", choices=["throughput", "latency", "size"], default="throughput")
    s.add_argument("--budget", type=int, default=12, help="evaluations in total, over all rungs (default 12)")
    s.add_argument("--space", default=None, help="search space YAML (default: vitkit.search.DEFAULT_SPACE)")
    s.add_argument("-o", "--out", required=True, help="output dir: search.jsonl, pareto.*, best/ (resumes a log)")
    s.add_argument("--arch", default=None, help="timm name or JSON {name, kwargs} for bare checkpoint files")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int, default=2)
    s.set_defaults(func=cmd_search)


def _rows_table(rows: list[dict], title: str, max_drop: float):
    from rich.table import Table

    table = Table(title=title)
    for h in ("candidate", "val top-1 %", "drop pt", "speed-up", "size kB", "val images"):
        table.add_column(h, justify="left" if h == "candidate" else "right")
    for r in rows:
        style = None if r["drop_pt"] <= max_drop else "dim"
        table.add_row(
            r["label"],
            f"{100 * r['top1']:.2f}",
            f"{r['drop_pt']:+.2f}",
            f"{r['speedup']:.2f}×",
            f"{r['size_bytes'] / 1024:.0f}",
            str(r["images"]),
            style=style,
        )
    return table


def cmd_search(args) -> int:
    from ..search.core import NoFeasibleCandidate, run_search
    from ..ui import console, parse_arch

    con = console()
    with con.status("searching...") as status:

        def say(msg: str) -> None:
            con.log(msg)
            status.update(msg[:100] + "...")

        try:
            res = run_search(
                args.model,
                args.data,
                args.out,
                objective=args.objective,
                max_drop=args.max_drop,
                budget=args.budget,
                space=args.space,
                seed=args.seed,
                threads=args.threads,
                arch=parse_arch(args.arch),
                progress=say,
            )
        except NoFeasibleCandidate as exc:
            con.print(_rows_table(exc.closest, "closest candidates (none within --max-drop)", args.max_drop))
            con.print(f"[bold red]no candidate within {args.max_drop:g} pt[/]: Pareto front written to {args.out}")
            return EXIT_NO_CANDIDATE
    con.print(_rows_table(res.front, f"Pareto front ({args.objective}, val)", args.max_drop))
    t = res.test
    con.print(
        f"best: {res.best['label']}  test top-1 {100 * t['top1']:.2f}% (original {100 * t['base_top1']:.2f}%), "
        f"speed-up {t['speedup']:.2f}×, size {t['size_bytes'] / 1024:.0f} kB"
    )
    con.print(
        f"{res.evaluations} evaluations measured, {res.logged} read from the log, {res.seconds:.0f} s; "
        f"artifact in {args.out}/best, front in {args.out}/pareto.md"
    )
    return 0
