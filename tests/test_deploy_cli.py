"""``vitkit deploy``: auto with its candidate table, an explicit runtime, and bad input (exit 2, one line, nothing
written)."""

from __future__ import annotations

import json

import pytest

from vitkit.artifact import save_artifact
from vitkit.cli import main
from vitkit.deploy import auto

from .conftest import make_tiny

pytest.importorskip("onnxruntime")

FAST = "torch-fp32,torch-bf16,ort-fp32,ort-int8"


@pytest.fixture
def artifact(tmp_path, monkeypatch):
    monkeypatch.setenv(auto.CACHE_ENV, str(tmp_path / "cache"))
    return save_artifact(make_tiny(), None, None, tmp_path / "art")


def _args(art, out, *extra):
    return ["deploy", str(art), "-o", str(out), "--data", "digits", "--images", "24", *extra]


def test_auto_prints_every_candidate_and_writes_the_choice(artifact, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args(artifact, out, "--candidates", FAST, "--max-drop", "100")) == 0
    printed = capsys.readouterr().out
    for name in FAST.split(","):
        assert name in printed
    saved = json.loads((out / "runtime.json").read_text())
    assert saved["chosen"] in FAST.split(",") and f"deployed on {saved['chosen']}" in printed
    assert len(saved["candidates"]) == 4 and saved["machine"]["isa"] is not None
    assert main(_args(artifact, tmp_path / "again", "--candidates", FAST, "--max-drop", "100")) == 0
    assert "from the cache" in capsys.readouterr().out


def test_explicit_runtime_writes_its_file(artifact, tmp_path):
    out = tmp_path / "out"
    assert main(_args(artifact, out, "--runtime", "ort-int8")) == 0
    assert (out / "model.int8.onnx").stat().st_size > 0
    assert json.loads((out / "runtime.json").read_text()) == {"chosen": "ort-int8"}


def test_no_candidate_in_budget_prints_the_table_then_one_error_line(artifact, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(auto, "_score", lambda runner, images, labels, ref, batch: (0.0, 0.0))
    out = tmp_path / "out"
    assert main(_args(artifact, out, "--candidates", FAST)) == 2
    captured = capsys.readouterr()
    assert "ort-int8" in captured.out and "torch-bf16" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: runtime auto: no candidate keeps the top-1 drop within 1 pt")
    assert not out.exists()


def test_unknown_runtime_and_candidate_are_named(artifact, tmp_path, capsys):
    assert main(_args(artifact, tmp_path / "o1", "--runtime", "tensorrt")) == 2
    assert "tensorrt" in capsys.readouterr().err
    assert main(_args(artifact, tmp_path / "o2", "--candidates", "torch-fp32,openvino")) == 2
    assert "unknown auto candidate 'openvino'" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
