"""report.html is self-contained and renders in a real (headless Chromium) browser with its images decoded."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile

import pytest

from vitkit.report import plot_accuracy_vs_throughput
from vitkit.report_html import html_report

VARIANTS = [
    {"name": "baseline", "top1": 0.986, "agreement": 1.0, "throughput": 900.0, "speedup": 1.0, "macs": 2.1e7},
    {
        "name": "tome<r=6>",
        "top1": 0.98,
        "agreement": 0.99,
        "throughput": 1200.0,
        "speedup": 1.33,
        "macs": 1.5e7,
        "shift_consistency": 0.97,
        "patch_corrupt_top1": 0.9,
    },
]


def _page(tmp_path, title="demo <&> report"):
    png = plot_accuracy_vs_throughput(VARIANTS, tmp_path / "p.png")
    steps = [{"name": "tome", "kind": "runtime", "config": {"r": 6}, "decisions": {"summary": "r=6 per block"}}]
    text = html_report(
        {"variants": VARIANTS, "env": {"torch": "2.14.1"}},
        title=title,
        steps=steps,
        images={"accuracy vs throughput": png.read_bytes()},
    )
    path = tmp_path / "report.html"
    path.write_text(text)
    return path, text


def test_html_is_self_contained_and_escaped(tmp_path):
    _, text = _page(tmp_path)
    assert "demo &lt;&amp;&gt; report" in text and "demo <&> report" not in text
    assert "data:image/png;base64," in text
    assert not re.search(r"""(src|href)=["'](https?:)?//""", text), "page must not load anything from the network"
    assert text.count("<tr") == 3  # header + 2 variants
    assert "98.60" in text and "1.33x" in text and "97.0" in text


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (.ci/run installs it)")
def test_opens_in_headless_chromium(tmp_path):
    path, _ = _page(tmp_path)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=3000",
            "--dump-dom",
            path.as_uri(),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    dom = out.stdout
    assert 'data-images-ok="yes"' in dom, dom[:500]
    assert 'data-rows="2"' in dom
    assert "tome&lt;r=6&gt;" in dom


def test_plot_labels_of_close_points_do_not_share_a_line_and_titles_name_no_path(tmp_path):
    from vitkit.recipe import model_label
    from vitkit.report import label_offsets

    from .conftest import make_tiny

    close = label_offsets([(100.0, 98.6), (101.0, 98.6), (102.0, 98.5), (300.0, 90.0)])
    assert len(set(close[:3])) == 3 and close[3] == close[0]
    model = make_tiny("vit")
    assert model_label(model, "deit_small_patch16_224") == "deit_small_patch16_224"
    label = model_label(model, str(tmp_path / "cache" / "reference-abc123"))
    assert str(tmp_path) not in label and "32×32" in label and "10 classes" in label
