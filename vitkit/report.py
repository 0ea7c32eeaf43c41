"""Reports: what ``apply_`` did (:class:`Report`) and how variants measured (Markdown table, PNG plot)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .bench.record import env_value

_log = logging.getLogger(__name__)


@dataclass
class StepRecord:
    """One applied transform: its registered name, kind, full config and the decisions it took."""

    name: str
    kind: str
    version: int
    config: dict[str, Any]
    decisions: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Report:
    """Returned by ``vitkit.apply_``: the steps applied (or planned, with ``dry_run``)."""

    steps: list[StepRecord] = field(default_factory=list)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "steps": [s.to_dict() for s in self.steps]}

    def __str__(self) -> str:
        head = "planned" if self.dry_run else "applied"
        lines = [f"{head} {len(self.steps)} step(s)"]
        for s in self.steps:
            lines.append(f"- {s.name} ({s.kind}): {s.decisions.get('summary', '')}".rstrip(": "))
        return "\n".join(lines)


COLUMNS = [
    ("name", "variant", "{}"),
    ("top1", "top-1 %", "{:.2f}"),
    ("agreement", "agree %", "{:.2f}"),
    ("throughput", "img/s", "{:.1f}"),
    ("speedup", "speed-up", "{:.2f}x"),
    ("latency_p50_ms", "p50 ms", "{:.2f}"),
    ("latency_p90_ms", "p90 ms", "{:.2f}"),
    ("peak_mem_mb", "peak MB", "{:.0f}"),
    ("params", "params M", "{:.3f}"),
    ("file_bytes", "file MB", "{:.2f}"),
    ("macs", "GMACs", "{:.4f}"),
    ("patch_corrupt_top1", "patch-noise top-1 %", "{:.1f}"),
    ("shift_consistency", "1-px shift cons. %", "{:.1f}"),
]
_SCALE = {
    "top1": 100,
    "agreement": 100,
    "patch_corrupt_top1": 100,
    "shift_consistency": 100,
    "params": 1e-6,
    "file_bytes": 1 / 2**20,
    "macs": 1e-9,
}


def _cell(key: str, fmt: str, value: Any) -> str:
    if value is None:
        return "–"
    if key in _SCALE:
        value = value * _SCALE[key]
    return fmt.format(value)


def table_rows(variants: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = [title for _, title, _ in COLUMNS]
    rows = [[_cell(k, f, v.get(k)) for k, _, f in COLUMNS] for v in variants]
    return header, rows


def markdown_table(variants: list[dict[str, Any]]) -> str:
    header, rows = table_rows(variants)
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def markdown_report(result: dict[str, Any], *, title: str = "vitkit report", steps: list[dict] | None = None) -> str:
    env = result.get("env", {})
    settings = result.get("settings", {})
    lines = [f"# {title}", "", markdown_table(result["variants"]), ""]
    if steps:
        lines += ["## Steps", ""]
        for s in steps:
            summary = s.get("decisions", {}).get("summary", "")
            lines.append(f"- **{s['name']}** ({s['kind']}): `{s['config']}` {summary}".rstrip())
        lines.append("")
    runtime = result.get("runtime") or {}
    if runtime.get("markdown"):
        lines += ["## Runtime choice (candidates measured on this machine)", "", runtime["markdown"], ""]
    lines += ["## Environment", ""]
    lines += [f"- {k}: {env_value(v)}" for k, v in env.items()]
    if settings:
        lines += [f"- {k}: {v}" for k, v in settings.items()]
    lines += [
        "",
        "Throughput is img/s at the largest batch size; speed-up and latency are measured against the baseline "
        "in the same process, interleaved, median of repeats. Peak MB = RSS added by one inference + weights.",
    ]
    return "\n".join(lines) + "\n"


def label_offsets(points: list[tuple[float, float]], *, step: float = 11.0) -> list[float]:
    """Vertical label offsets (points) so that labels of nearby points do not overlap: a point within 15 % of the
    x range and 4 % of the y range of an earlier one moves its label one line (``step``) past the lowest free slot."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    dx, dy = 0.15 * ((max(xs) - min(xs)) or 1.0), 0.04 * ((max(ys) - min(ys)) or 1.0)
    offsets: list[float] = []
    for i, (x, y) in enumerate(points):
        taken = {offsets[j] for j in range(i) if abs(points[j][0] - x) <= dx and abs(points[j][1] - y) <= dy}
        k = 0
        while 4.0 + k * step in taken:
            k += 1
        offsets.append(4.0 + k * step)
    return offsets


def plot_accuracy_vs_throughput(variants: list[dict[str, Any]], path: str | Path, *, title: str = "") -> Path | None:
    """PNG scatter: one point per variant (x = throughput, y = top-1). Returns None without accuracy data."""
    pts = [
        (v["throughput"], v["top1"], v["name"]) for v in variants if v.get("top1") is not None and v.get("throughput")
    ]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for (x, y, label), dy in zip(pts, label_offsets([(x, 100 * y) for x, y, _ in pts]), strict=True):
        ax.scatter([x], [100 * y], s=40)
        ax.annotate(label, (x, 100 * y), textcoords="offset points", xytext=(5, dy), fontsize=8)
    ax.set_xlabel("throughput (img/s)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title or "accuracy vs throughput")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    from ._io import atomic_write_bytes

    buf = _fig_bytes(fig)
    plt.close(fig)
    atomic_write_bytes(path, buf)
    return path


def _fig_bytes(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
