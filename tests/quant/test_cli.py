"""CLI: ``vitkit export-qdq`` and ``vitkit int-eval`` on a tiny ptq artifact; bad input → one error line, exit 2."""

from __future__ import annotations

import pytest
import torch

import vitkit
from vitkit.cli import main
from vitkit.quant import PTQConfig

from ..conftest import make_tiny

pytest.importorskip("onnxruntime")


@pytest.fixture
def ptq_artifact(tmp_path):
    m = make_tiny("vit")
    vitkit.apply_(m, PTQConfig(calib_images=8), calib=torch.randn(8, 3, 32, 32))
    return vitkit.save_artifact(m, None, None, tmp_path / "q")


def test_export_qdq_cli(ptq_artifact, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export-qdq", str(ptq_artifact), "-o", str(out)]) == 0
    assert out.is_file() and "max |Δ|" in capsys.readouterr().out


def test_cli_bad_input(ptq_artifact, tmp_path, capsys):
    assert main(["export-qdq", str(tmp_path / "nope"), "-o", str(tmp_path / "m.onnx")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert main(["export-qdq", str(ptq_artifact), "-o", str(tmp_path / "m.txt")]) == 2
    fp = vitkit.save_artifact(make_tiny("vit"), None, None, tmp_path / "fp")
    assert main(["int-eval", str(fp)]) == 2
    assert "no ptq step" in capsys.readouterr().err
