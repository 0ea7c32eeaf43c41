"""Bad input through the CLI → the "reliability" section of BENCHMARKS.md.

Runs every case of ``tests/test_bad_inputs.py`` (:data:`CASES`, the same table pytest runs) outside pytest, plus
a real SIGINT to a subprocess in the middle of ``save_artifact``, and records for each: exit status, whether
stderr is exactly one ``error: ...`` line naming the problem (no traceback), whether every file under the case
directory (inputs, an existing output) is byte-identical afterwards and no output / stage directory appeared.

Usage: .venv/bin/python benchmarks/reliability.py [--out BENCHMARKS.md] [--only ID ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_bad_inputs import CASES, SIGINT_CASE, SkipCase, run_case, sigint_during_save  # noqa: E402
from vitkit.bench import environment  # noqa: E402
from vitkit.bench.record import env_lines, write_section  # noqa: E402


def abbreviate(argv: list[str], d: Path, width: int = 34) -> str:
    """``vitkit <argv>`` with the case directory shown as ``D/`` and long arguments cut."""
    parts = []
    for a in argv:
        a = a.replace(str(d) + "/", "D/").replace(str(d), "D")
        parts.append(a if len(a) <= width else a[: width - 1] + "…")
    return "vitkit " + " ".join(parts)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def run_all(only: list[str], skipped: list[str]) -> list[dict]:
    rows = []
    for case in CASES + [SIGINT_CASE]:
        if only and case.id not in only:
            continue
        with tempfile.TemporaryDirectory(prefix="vitkit-reliability-") as tmp:
            d = Path(tmp)
            try:
                outcome = sigint_during_save(d) if case is SIGINT_CASE else run_case(case, d)
            except SkipCase as exc:
                print(f"skip {case.id:<24} {exc}", flush=True)
                skipped.append(f"{case.id} ({exc})")
                continue
            problems = outcome.problems(case)
            rows.append(
                {
                    "case": case,
                    "command": abbreviate(outcome.argv, d),
                    "rc": outcome.rc,
                    "one_line": len(outcome.lines) == 1 and outcome.message.startswith("error: "),
                    "traceback": "Traceback" in outcome.stderr,
                    "untouched": not outcome.changed,
                    "ok": not problems,
                    "problems": problems,
                    "message": outcome.message.replace(str(d) + "/", "D/").replace(str(d), "D"),
                    "seconds": outcome.seconds,
                }
            )
        r = rows[-1]
        print(f"{'ok ' if r['ok'] else 'BAD'} {case.id:<24} rc {r['rc']:<3} {r['message'][:90]}", flush=True)
        if r["problems"]:
            print(f"    {r['problems']}", flush=True)
    return rows


def render(rows: list[dict], env: dict, skipped: list[str]) -> str:
    n = len(rows)

    def count(key: str) -> int:
        return sum(bool(r[key]) for r in rows)

    clean = sum(r["rc"] == r["case"].rc and r["one_line"] and not r["traceback"] for r in rows)
    head = [
        "## Reliability: bad input through the CLI (`benchmarks/reliability.py`)",
        "",
        "Each row is one bad input a user can type, built in an empty directory `D/` and run through the CLI entry",
        "point (`vitkit.cli.main.main`, in process; the SIGINT row is a real signal to a subprocess). The promise:",
        "exit 2 (130 for Ctrl-C) and exactly one `error: ...` line naming the problem and the fix, no traceback;",
        "every file under `D/` byte-identical afterwards (sha256), so the inputs are untouched, no output or",
        "half-written stage directory appears, and an interrupted save over an existing artifact leaves the old one.",
        "The same table is `tests/test_bad_inputs.py::CASES`, asserted by pytest. The checks assert that the line",
        "names the problem (a substring per case); whether it also names a fix is for the reader of the message",
        'column ("file not found", "corrupt or truncated safetensors" and "unknown model" name none).',
        "",
        f"- inputs run: {n}",
        f"- clean errors (expected exit status, exactly one `error:` line, no traceback): {clean}/{n}",
        f"- inputs untouched and nothing partial written: {count('untouched')}/{n}",
        f"- every check passed (the above, and the line names the problem): {count('ok')}/{n}",
        f"- skipped here: {', '.join(skipped) or 'none'}",
        env_lines(env),
        "",
        "| case | command | rc | one line | untouched | message |",
        "|---|---|---|---|---|---|",
    ]
    body = []
    for r in rows:
        mark = "" if r["ok"] else f" **FAIL: {'; '.join(r['problems'])}**"
        msg = r["message"] if len(r["message"]) <= 160 else r["message"][:159] + "…"
        body.append(
            f"| {r['case'].id} | `{cell(r['command'])}` | {r['rc']} | {'yes' if r['one_line'] else 'no'} | "
            f"{'yes' if r['untouched'] else 'no'} | {cell(msg)}{cell(mark)} |"
        )
    return "\n".join(head + body) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--only", nargs="*", default=[], help="case ids to run (default: all)")
    args = ap.parse_args(argv)
    skipped: list[str] = []
    rows = run_all(args.only, skipped)
    if args.only:
        return  # a partial run is for debugging: keep the recorded section whole
    write_section("reliability", render(rows, environment(probe=False), skipped), args.out)


if __name__ == "__main__":
    main()
