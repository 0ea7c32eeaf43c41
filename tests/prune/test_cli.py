"""`vitkit prune MODEL ... -o out/`: dry run, prune + KD recovery into a loadable artifact, bad input."""

import json

import pytest
import torch

import vitkit
from vitkit.artifact import save_artifact
from vitkit.cli import main
from vitkit.prune import structure

from ..conftest import make_tiny


@pytest.fixture
def tiny_dir(tmp_path):
    return str(save_artifact(make_tiny(), None, None, tmp_path / "tiny"))


def test_dry_run_lists_pruned_heads_and_writes_nothing(tiny_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["prune", tiny_dir, "--ratio", "0.4", "--importance", "l1", "--dry-run", "-o", str(out), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dry_run"] and summary["macs"]["after"] < summary["macs"]["before"]
    assert summary["pruned_heads"] or summary["pruned_mlp_count"]
    assert not out.exists()


def test_prune_and_distill_writes_loadable_artifact(tiny_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["prune", tiny_dir, "--ratio", "0.5", "--importance", "hessian", "--data", "digits", "--calib-images", "8"]
    argv += ["--distill-epochs", "1", "--distill-limit", "32", "-o", str(out), "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert 0.0 <= summary["top1_after"] <= 1.0 and "KD" in summary["distill"]
    assert summary["macs"]["after"] <= 0.5 * summary["macs"]["before"] * 1.001
    loaded = vitkit.load(out)
    s = structure(loaded)
    assert sum(b["mlp_hidden"] for b in s.values()) < sum(b["mlp_hidden"] for b in structure(make_tiny()).values())
    x = torch.randn(2, 3, 32, 32)
    assert loaded(x).shape == (2, 10)


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--ratio", "1.0"], "ratio must be in [0, 1)"),
        (["--ratio", "-0.1"], "ratio must be in [0, 1)"),
        (["--importance", "oracle"], "importance must be one of"),
        (["--groups", "heads,tokens"], "groups must be distinct names"),
        (["--distill-epochs", "-1"], "--distill-epochs must be >= 0"),
        ([], "needs -o OUT"),
    ],
)
def test_bad_input_exits_2_with_one_line(tiny_dir, capsys, extra, needle):
    argv = ["prune", tiny_dir, "--importance", "l1"] + extra
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err


def test_refuses_to_overwrite_a_non_artifact(tiny_dir, tmp_path, capsys):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["prune", tiny_dir, "--importance", "l1", "-o", str(out)]) == 2
    assert "not a vitkit artifact" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
