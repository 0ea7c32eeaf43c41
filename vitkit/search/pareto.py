"""Pareto front of (accuracy, objective) and its table / JSON / plot."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._io import atomic_write_bytes, atomic_write_text
from .halving import OBJECTIVES


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` dominates ``b`` (all coordinates to maximize): no worse everywhere, strictly better somewhere."""
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(x > y for x, y in zip(a, b, strict=True))


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points (every coordinate maximized), in input order. Duplicates all stay."""
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]


def front_of(rows: list[dict[str, Any]], objective: str) -> list[dict[str, Any]]:
    """Rows on the (accuracy drop ↓, objective) front, sorted by objective from best to worst. The drop is against
    the original on the same images, so rows measured at different fidelities compare fairly."""
    key, sign = OBJECTIVES[objective]
    pts = [(-r["drop_pt"], sign * float(r[key])) for r in rows]
    front = [rows[i] for i in pareto_front(pts)]
    return sorted(front, key=lambda r: -sign * float(r[key]))


def _fmt_obj(row: dict[str, Any], objective: str) -> str:
    key, _ = OBJECTIVES[objective]
    v = row[key]
    return f"{v / 1024:.0f} kB" if objective == "size" else f"{v:.2f}×"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def markdown_table(rows: list[dict[str, Any]], objective: str, max_drop: float) -> str:
    lines = [
        f"| candidate | val top-1 % | drop pt | within {max_drop:g} pt | {objective} | speed-up | size kB | val imgs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {100 * r['top1']:.2f} | {r['drop_pt']:+.2f} | {_yes(r['drop_pt'] <= max_drop)}"
            f" | {_fmt_obj(r, objective)} | {r['speedup']:.2f}× | {r['size_bytes'] / 1024:.0f} | {r['images']} |"
        )
    return "\n".join(lines) + "\n"


def plot_front(rows: list[dict[str, Any]], front: list[dict[str, Any]], objective: str, max_drop: float, path) -> Path:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, _ = OBJECTIVES[objective]
    scale = 1 / 1024 if objective == "size" else 1.0
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.scatter([scale * r[key] for r in rows], [r["drop_pt"] for r in rows], c="#bbbbbb", label="evaluated")
    fx = [scale * r[key] for r in front]
    ax.plot(fx, [r["drop_pt"] for r in front], "o-", c="#d62728", label="Pareto front")
    for r in front:
        ax.annotate(r["label"], (scale * r[key], r["drop_pt"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.axhline(max_drop, ls="--", c="k", lw=0.8, label=f"max drop {max_drop:g} pt")
    ax.set_xlabel({"throughput": "throughput speed-up ×", "latency": "latency ratio ×", "size": "size kB"}[objective])
    ax.set_ylabel("top-1 drop vs original (pt, val)")
    ax.invert_yaxis()
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def write_front(out: Path, rows: list[dict[str, Any]], objective: str, max_drop: float, summary: dict) -> list[dict]:
    """Write ``pareto.md``, ``pareto.json`` and ``pareto.png`` into ``out``; returns the front rows."""
    front = front_of(rows, objective)
    md = (
        f"# Pareto front: top-1 drop vs {objective}\n\n"
        f"{summary.get('note', '')}\n\n## Front\n\n{markdown_table(front, objective, max_drop)}\n"
        f"## All evaluated candidates (highest fidelity reached)\n\n{markdown_table(rows, objective, max_drop)}"
    )
    atomic_write_text(out / "pareto.md", md)
    atomic_write_text(out / "pareto.json", json.dumps({**summary, "front": front, "evaluated": rows}, indent=2) + "\n")
    plot_front(rows, front, objective, max_drop, out / "pareto.png")
    return front
