"""``vitkit search`` end to end: one real small run on a tiny model, resume, foreign log, no feasible candidate."""

import json

import pytest
import yaml

import vitkit
from vitkit.artifact import save_artifact
from vitkit.cli import main

from ..conftest import make_tiny
from .fakes import FakeEvaluator

SPACE = {
    "axes": [
        {"transform": "prune", "param": "ratio", "values": [0, 0.3], "config": {"importance": "l1"}},
        {"transform": "tome", "param": "r", "values": [0, 2]},
    ],
    "deploy": ["torch"],
    "fidelity": {"images": [30, 60], "repeats": [1, 2]},
    "eta": 2,
    "batch_size": 4,
}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("search")
    model = save_artifact(make_tiny(), None, None, tmp / "model")
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    out = tmp / "out"
    args = ["search", "--model", str(model), "--data", "digits", "--max-drop", "100", "--budget", "5", "--threads", "1"]
    args += ["--space", str(space), "-o", str(out)]
    rc = main(args)
    return rc, args, out, tmp


def test_real_run_writes_front_log_and_best_artifact(real_run):
    rc, _, out, _ = real_run
    assert rc == 0
    for name in ("search.jsonl", "pareto.md", "pareto.json", "pareto.png", "best/model.safetensors"):
        assert (out / name).is_file(), name
    lines = [json.loads(x) for x in (out / "search.jsonl").read_text().splitlines()]
    assert lines[0]["type"] == "header" and len(lines) == 1 + 5  # budget 5: 3 candidates, then the best 2
    front = json.loads((out / "pareto.json").read_text())
    assert front["front"] and front["evaluations_new"] == 5
    best = vitkit.load(out / "best")  # the artifact replays its steps
    report = json.loads((out / "best" / "report.json").read_text())
    label = report["search"]["best"]["label"]
    assert [s.name for s in best.vitkit_steps] == [p.split("=")[0] for p in label.split("@")[0].split("+")]
    assert report["test"]["images"] == 270  # the full digits test split


def test_rerun_resumes_without_measuring(real_run, capsys):
    rc, args, out, _ = real_run
    assert main(args) == 0
    assert len((out / "search.jsonl").read_text().splitlines()) == 6  # nothing re-measured or re-logged
    assert "0 evaluations measured, 5 read from the log" in capsys.readouterr().out


def test_log_of_another_model_is_refused(real_run, capsys):
    _, args, out, tmp = real_run
    other = save_artifact(make_tiny(seed=1), None, None, tmp / "other")
    args = list(args)
    args[args.index("--model") + 1] = str(other)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "another model" in err and "refusing to resume" in err


def test_no_candidate_within_budget_exits_non_zero_listing_the_closest(tmp_path, monkeypatch, capsys):
    import vitkit.search.evaluate as ev_mod

    def fake_factory(baseline, val, calib, data, **kw):
        return FakeEvaluator(Truth())

    class Truth(dict):  # every candidate loses 5 pt and more
        def __getitem__(self, cid):
            return (5.0 + int(cid[:2], 16) / 100, 2.0)

    monkeypatch.setattr(ev_mod, "RecipeEvaluator", fake_factory)
    model = save_artifact(make_tiny(), None, None, tmp_path / "model")
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    args = ["search", "--model", str(model), "--data", "digits", "--max-drop", "1", "--budget", "4"]
    rc = main(args + ["--space", str(space), "-o", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 1
    assert "closest candidates" in out and "no candidate within 1 pt" in out
    assert "prune=0.3" in out or "tome=2" in out
    assert (tmp_path / "out" / "pareto.md").is_file() and not (tmp_path / "out" / "best").exists()


def test_out_of_order_space_is_exit_2_naming_both(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({**SPACE, "axes": SPACE["axes"][::-1]}))
    rc = main(["search", "--model", "x", "--space", str(space), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "'prune'" in err and "'tome'" in err


def test_too_small_budget_is_refused_before_any_work(tmp_path, capsys):
    rc = main(["search", "--model", "not-loaded", "--budget", "1", "-o", str(tmp_path / "o")])
    assert rc == 2 and "--budget 1 is too small for 2 fidelity rungs" in capsys.readouterr().err
