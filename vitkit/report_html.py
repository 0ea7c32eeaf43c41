"""``report.html``: one self-contained page (inline CSS, PNGs embedded as data URIs, no scripts from anywhere).

It shows the same facts as ``report.md`` — every variant's accuracy, agreement, throughput, latency, memory,
params, size, MACs and robustness, the steps with their configs and decisions, and the environment — and
opens offline in any browser. A small inline script marks ``<body data-images-ok>`` once every embedded image
has decoded, which the browser test reads.
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any

from .bench.record import env_value
from .report import table_rows

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:72rem;color:#1d1d1f;
padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;font-size:.85rem;width:100%}
th,td{border:1px solid #d0d0d0;padding:.3rem .5rem;text-align:right;white-space:nowrap}
th{background:#f3f4f6}td:first-child,th:first-child{text-align:left}
tr.baseline td{background:#fafafa;color:#555}
code{font-size:.8rem;background:#f5f5f5;padding:.05rem .25rem;border-radius:3px;white-space:pre-wrap}
img{max-width:100%;border:1px solid #eee}
.muted{color:#666;font-size:.85rem}
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.every(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute('data-images-ok', ok ? 'yes' : 'no');
  document.body.setAttribute('data-rows', String(document.querySelectorAll('table.variants tbody tr').length));
});
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def variants_table(variants: list[dict[str, Any]]) -> str:
    header, rows = table_rows(variants)
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = ' class="baseline"' if i == 0 and len(rows) > 1 else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>")
    return f'<table class="variants"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def html_report(
    result: dict[str, Any],
    *,
    title: str = "vitkit report",
    steps: list[dict] | None = None,
    images: dict[str, bytes] | None = None,
) -> str:
    """The whole page as a string. ``images`` maps a caption to PNG bytes, embedded inline."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        "<h2>Measured against the untouched model</h2>",
        variants_table(result.get("variants") or []),
        '<p class="muted">Throughput is img/s at the largest batch size; speed-up and latency are measured against '
        "the baseline (first row) in the same process, interleaved, median of repeats. Peak MB = RSS added by one "
        "inference + weights. Robustness: top-1 with 10% of the patches replaced by noise, and the share of "
        "predictions unchanged by a one-pixel shift.</p>",
    ]
    for caption, png in (images or {}).items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<figure><img alt="{_esc(caption)}" src="data:image/png;base64,{data}">')
        parts.append(f"<figcaption class='muted'>{_esc(caption)}</figcaption></figure>")
    if steps:
        parts.append("<h2>Steps</h2><ol>")
        for s in steps:
            decisions = s.get("decisions") or {}
            summary = decisions.get("summary", "")
            cfg = json.dumps(s.get("config", {}), default=str)
            head = f"<b>{_esc(s.get('name'))}</b> ({_esc(s.get('kind'))}) {_esc(summary)}"
            parts.append(f"<li>{head}<br><code>{_esc(cfg)}</code></li>")
        parts.append("</ol>")
    env = result.get("env") or {}
    settings = result.get("settings") or {}
    if env or settings:
        parts.append("<h2>Environment</h2><ul>")
        parts += [f"<li>{_esc(k)}: {_esc(env_value(v))}</li>" for k, v in {**env, **settings}.items()]
        parts.append("</ul>")
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts) + "\n"
