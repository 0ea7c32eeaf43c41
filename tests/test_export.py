"""``vitkit export``: artifacts of every kind export to ONNX with a parity check on real images."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import vitkit
from vitkit.cli import main
from vitkit.data import load_dataset
from vitkit.deploy import export_model
from vitkit.errors import ConfigError, UnsupportedModelError

from .conftest import make_tiny

pytest.importorskip("onnxruntime")


@pytest.mark.parametrize(
    "steps",
    [[], [vitkit.ToMeConfig(r=3)], [vitkit.PruneConfig(ratio=0.3, importance="l1")]],
    ids=["float", "tome", "pruned"],
)
def test_export_parity_on_real_images(steps, tmp_path):
    model = make_tiny("vit")
    vitkit.apply_(model, steps)
    data = load_dataset("digits", "test", model=model)
    res = export_model(model, tmp_path / "out", data=data, images=64, bench=False)
    assert res.mode == "float" and res.images == 64
    assert res.max_abs_diff <= 1e-4 and res.agreement == 1.0
    saved = json.loads((tmp_path / "out" / "export_report.json").read_text())
    assert saved["top1_agreement"] == 1.0 and (tmp_path / "out" / "model.onnx").stat().st_size > 0


def test_export_quantized_model(tmp_path):
    model = make_tiny("vit")
    data = load_dataset("digits", "train", model=model)
    calib = torch.stack([data[i][0] for i in range(16)])
    vitkit.apply_(model, vitkit.PTQConfig(w_bits=8, a_bits=8, method="repq", calib_images=16), calib=calib)
    res = export_model(model, tmp_path / "q", data=load_dataset("digits", "test", model=model), images=64, bench=False)
    assert res.mode == "qdq"  # our calibrated scales as QuantizeLinear/DequantizeLinear pairs
    assert res.agreement >= 0.95, res


def test_export_fake_quant_graph(tmp_path):
    """--quant fake traces the fake-quant model itself (its state dict read as fp32, not packed codes)."""
    model = make_tiny("vit")
    data = load_dataset("digits", "train", model=model)
    calib = torch.stack([data[i][0] for i in range(16)])
    vitkit.apply_(model, vitkit.PTQConfig(w_bits=8, a_bits=8, method="repq", calib_images=16), calib=calib)
    test = load_dataset("digits", "test", model=model)
    res = export_model(model, tmp_path / "f", data=test, images=64, quant="fake", bench=False)
    assert res.mode == "fake" and res.agreement >= 0.95 and res.max_abs_diff < 1e-2, res


def test_export_benchmarks_ort_against_pytorch(tmp_path):
    model = make_tiny("vit")
    res = export_model(
        model, tmp_path / "b", images=8, bench_kwargs=dict(batch_sizes=(1, 4), repeats=2, latency_runs=3)
    )
    names = [v["name"] for v in res.bench["variants"]]
    assert names == ["pytorch", "onnxruntime (float)"]
    ort_row = res.bench["variants"][1]
    assert ort_row["file_bytes"] > 0 and ort_row["throughput"] > 0 and ort_row["agreement"] is None
    assert (tmp_path / "b" / "export_report.md").read_text().startswith("# ONNX Runtime vs PyTorch")


class Bessel(nn.Module):
    def forward(self, x):
        return torch.special.i0(x)


def test_unsupported_op_is_named(tmp_path):
    model = make_tiny("vit")
    model.head = nn.Sequential(model.head, Bessel())
    with pytest.raises(UnsupportedModelError, match=r"aten::i0"):
        export_model(model, tmp_path / "u", images=2, bench=False)
    assert not (tmp_path / "u" / "model.onnx").exists()


def test_bad_options(tmp_path):
    model = make_tiny("vit")
    with pytest.raises(ConfigError, match="format"):
        export_model(model, tmp_path, fmt="tflite", bench=False)
    with pytest.raises(ConfigError, match="quantized"):
        export_model(model, tmp_path, quant="qdq", bench=False)
    with pytest.raises(ConfigError, match="images"):
        export_model(model, tmp_path, images=0, bench=False)


def test_cli_export_artifact(tmp_path, capsys):
    model = make_tiny("vit")
    vitkit.apply_(model, vitkit.ToMeConfig(r=2))
    art = vitkit.save_artifact(model, {"eval": {"data": "digits"}}, None, tmp_path / "art")
    before = sorted(p.name for p in art.iterdir())
    assert main(["export", str(art), "--images", "32", "--no-bench"]) == 0
    out = capsys.readouterr().out
    assert "parity on 32 real images" in out and "top-1 agreement 100.00%" in out
    assert (tmp_path / "art-onnx" / "model.onnx").exists()
    assert sorted(p.name for p in art.iterdir()) == before  # the input artifact is untouched
    assert main(["export", str(tmp_path / "missing")]) == 2


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--quant", "int4"], "quant mode"),  # not a quant mode
        (["--quant", "qdq"], "needs a quantized (ptq) artifact"),  # an int8 graph the float model cannot give
        (["--format", "tflite"], "export format"),
    ],
)
def test_cli_export_bad_request_is_one_line(argv, match, tmp_path, capsys):
    art = vitkit.save_artifact(make_tiny("vit"), {"eval": {"data": "digits"}}, None, tmp_path / "art")
    assert main(["export", str(art), "--images", "4", "--no-bench", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
