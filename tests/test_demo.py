"""`vitkit demo` end to end, with a tiny stand-in for the cached reference model."""

import json

import vitkit.demo as demo
from vitkit.artifact import save_artifact
from vitkit.cli import main

from .conftest import make_tiny


def test_demo_prints_table_and_writes_artifact(tmp_path, monkeypatch, capsys):
    ref = save_artifact(make_tiny(), None, None, tmp_path / "ref")
    monkeypatch.setattr(demo, "reference_artifact", lambda **kw: ref)
    monkeypatch.setenv("VITKIT_CACHE", str(tmp_path / "cache"))
    # runtime auto as the demo runs it, without the two torch.compile candidates (tests/quant/test_torch_int8.py)
    fast = {**demo.DEMO_DEPLOY, "candidates": ["torch-fp32", "torch-bf16", "ort-fp32", "ort-int8", "ort-qdq"]}
    monkeypatch.setattr(demo, "DEMO_DEPLOY", fast)
    out = tmp_path / "demo-out"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "top-1 %" in printed and "baseline" in printed and str(out) in printed
    report = json.loads((out / "report.json").read_text())
    assert report["variants"][0]["name"] == "baseline" and report["variants"][-1]["top1"] is not None
    assert (out / "report.md").is_file() and (out / "accuracy_vs_throughput.png").is_file()
    assert (out / "report.html").is_file() and (out / "runtime.json").is_file()
    names = [v["name"] for v in report["variants"]]
    chosen = report["runtime"]["chosen"]
    assert names[0] == "baseline" and names[-1] == f"demo @ {chosen}" and "ptq (fake-quant sim.)" in names
    assert "Runtime choice" in (out / "report.md").read_text() and chosen in printed


def test_reference_is_cached(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setenv("VITKIT_CACHE", str(tmp_path))

    def fake_train(path, **kw):
        calls.append(path)
        save_artifact(make_tiny(), None, None, path)

    monkeypatch.setattr(demo, "train_reference", fake_train)
    first = demo.reference_artifact()
    second = demo.reference_artifact()
    assert first == second and len(calls) == 1 and first.parent == tmp_path
