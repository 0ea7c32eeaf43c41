"""Recipes and the CLI contract other issues rely on (eval --json, run -o, exit codes, --help)."""

import json

import pytest
import yaml

import vitkit
from vitkit import ConfigError
from vitkit.artifact import save_artifact
from vitkit.cli import main
from vitkit.recipe import parse_recipe, run_recipe

from .conftest import make_tiny


@pytest.fixture
def artifact(tmp_path):
    return save_artifact(make_tiny(), None, None, tmp_path / "model")


def test_recipe_validation_messages():
    with pytest.raises(ConfigError, match=r"unknown recipe key\(s\) \['stpes'\]; valid keys"):
        parse_recipe({"model": "test_vit", "stpes": []})
    with pytest.raises(ConfigError, match="unknown transform 'tomee'.*valid transforms"):
        parse_recipe({"model": "test_vit", "steps": [{"tomee": {"r": 8}}]})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['batch'\] in recipe 'bench'"):
        parse_recipe({"model": "test_vit", "bench": {"batch": 4}})
    with pytest.raises(ConfigError, match="needs 'model'"):
        parse_recipe({"steps": []})


def test_run_recipe_writes_report(tmp_path, artifact):
    recipe = parse_recipe(
        {
            "model": str(artifact),
            "eval": {"data": "digits", "split": "test", "limit": 64},
            "bench": {"batch_sizes": [1, 4], "threads": 2, "repeats": 2, "latency_runs": 3},
        }
    )
    _, report = run_recipe(recipe, tmp_path / "out")
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["variants"][0]["name"] == "baseline" and "env" in data and data["env"]["threads"] == 2
    assert (tmp_path / "out" / "report.md").read_text().startswith("# vitkit")
    assert (tmp_path / "out" / "accuracy_vs_throughput.png").stat().st_size > 1000
    assert vitkit.load(tmp_path / "out") is not None
    assert "<table" in (tmp_path / "out" / "report.html").read_text()


def test_composed_recipe_reports_every_step(tmp_path, artifact):
    recipe = parse_recipe(
        {
            "model": str(artifact),
            "steps": [{"prune": {"ratio": 0.3, "importance": "l1"}}, {"ptq": {"calib_images": 8}}, {"tome": {"r": 2}}],
            "eval": {"data": "digits", "split": "test", "limit": 32},
            "calib": {"data": "digits", "n": 8},
            "bench": {"batch_sizes": [1, 4], "threads": 2, "repeats": 2, "latency_runs": 3},
        }
    )
    _, report = run_recipe(recipe, tmp_path / "out")
    names = [v["name"] for v in report["variants"]]
    assert names == ["baseline", "prune", "prune+ptq (fake-quant sim.)", "prune+ptq+tome (fake-quant sim.)"]
    assert [s["name"] for s in report["steps"]] == ["prune", "ptq", "tome"]
    macs = [v["macs"] for v in report["variants"]]
    assert macs[0] > macs[1] >= macs[2] > macs[3]  # pruning and merging each cut MACs; ptq does not add any
    for v in report["variants"]:
        assert 0 <= v["shift_consistency"] <= 1 and 0 <= v["patch_corrupt_top1"] <= 1
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("<tr") == 5 and "data:image/png;base64," in html
    reloaded = vitkit.load(tmp_path / "out")
    assert [s.name for s in reloaded.vitkit_steps] == ["prune", "ptq", "tome"]


def test_recipe_deploys_to_onnx_runtime(tmp_path, artifact):
    recipe = parse_recipe(
        {
            "model": str(artifact),
            "steps": [{"tome": {"r": 2}}],
            "eval": {"data": "digits", "split": "test", "limit": 32, "robustness": False},
            "calib": {"data": "digits", "n": 8},
            "bench": {"batch_sizes": [1, 4], "threads": 2, "repeats": 2, "latency_runs": 3},
            "deploy": {"runtime": "onnxruntime", "int8": "dynamic"},
        }
    )
    _, report = run_recipe(recipe, tmp_path / "out")
    names = [v["name"] for v in report["variants"]]
    assert names == ["baseline", "tome", "baseline @ onnxruntime fp32", "tome @ onnxruntime int8 (dynamic)"]
    assert report["variants"][2]["agreement"] == 1.0  # the fp32 export is the same function
    assert report["variants"][3]["agreement"] >= 0.8  # int8 of a random tiny model: close, not equal
    assert (tmp_path / "out" / "model.onnx").stat().st_size > 0
    with pytest.raises(ConfigError, match="deploy.int8"):
        parse_recipe({"model": "x", "deploy": {"runtime": "onnxruntime", "int8": "int4"}})


def test_recipe_in_wrong_order_fails_before_any_work(tmp_path, artifact):
    recipe = parse_recipe({"model": str(artifact), "steps": [{"tome": {"r": 2}}, {"prune": {"ratio": 0.3}}]})
    with pytest.raises(vitkit.OrderError, match="prune.*tome|tome.*prune"):
        run_recipe(recipe, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_eval_json(artifact, capsys):
    assert main(["eval", str(artifact), "--data", "digits", "--split", "test", "--json", "--limit", "50"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["images"] == 50 and 0 <= out["top1"] <= 1


def test_cli_run(tmp_path, artifact, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model": str(artifact),
                "eval": {"data": "digits", "limit": 32},
                "bench": {"batch_sizes": [2], "repeats": 1, "latency_runs": 0},
            }
        )
    )
    assert main(["run", str(recipe), "-o", str(tmp_path / "out")]) == 0
    assert "artifact + report written" in capsys.readouterr().out
    assert (tmp_path / "out" / "report.json").is_file()


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["eval", "deit_smal_patch16_224"], "unknown model 'deit_smal_patch16_224'"),
        (["eval", "missing/weights.safetensors", "--arch", "test_vit"], "file not found"),
        (["eval", "test_vit", "--data", "cifar10"], "unknown dataset 'cifar10'"),
        (["run", "no-such-recipe.yaml", "-o", "x"], "recipe file not found"),
    ],
)
def test_cli_bad_input_one_line_error(argv, msg, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and msg in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_cli_bad_recipe_key(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: test_vit\nsteps: [{nosuch: {}}]\n")
    assert main(["run", str(recipe), "-o", str(tmp_path / "o")]) == 2
    assert "unknown transform 'nosuch'" in capsys.readouterr().err
    recipe.write_text("model: [unclosed\n")
    assert main(["run", str(recipe), "-o", str(tmp_path / "o")]) == 2
    assert "not valid YAML" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", ["list", "train", "eval", "bench", "run", "export", "demo"])
def test_every_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0 and "usage: vitkit" in capsys.readouterr().out


def test_cli_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "vitkit_mnist_tiny" in out and "mnist5k" in out


def test_recipe_deploys_with_runtime_auto(tmp_path, artifact, monkeypatch):
    monkeypatch.setenv("VITKIT_CACHE", str(tmp_path / "cache"))
    fast = ["torch-fp32", "torch-bf16", "ort-fp32", "ort-int8"]
    recipe = parse_recipe(
        {
            "model": str(artifact),
            "steps": [{"tome": {"r": 2}}],
            "eval": {"data": "digits", "split": "test", "limit": 32, "robustness": False},
            "calib": {"data": "digits", "n": 8},
            "bench": {"batch_sizes": [4], "threads": 2, "repeats": 2, "latency_runs": 3},
            "deploy": {"runtime": "auto", "max_drop": 100, "candidates": fast, "eval_images": 32},
        }
    )
    _, report = run_recipe(recipe, tmp_path / "out")
    chosen = report["runtime"]["chosen"]
    assert chosen in fast and [c["runtime"] for c in report["runtime"]["candidates"]] == fast
    assert [v["name"] for v in report["variants"]] == ["baseline", "tome", f"tome @ {chosen}"]
    assert json.loads((tmp_path / "out" / "runtime.json").read_text())["chosen"] == chosen
    assert "Runtime choice" in (tmp_path / "out" / "report.md").read_text()
    with pytest.raises(ConfigError, match="deploy.runtime must be one of"):
        parse_recipe({"model": "x", "deploy": {"runtime": "tensorrt"}})
    with pytest.raises(ConfigError, match="deploy.candidates: unknown runtime 'openvino'"):
        parse_recipe({"model": "x", "deploy": {"runtime": "auto", "candidates": ["openvino"]}})
    with pytest.raises(ConfigError, match="max_drop"):
        parse_recipe({"model": "x", "deploy": {"runtime": "auto", "max_drop": -1}})


def test_recipe_without_steps_deploys_the_dense_model(tmp_path, artifact):
    recipe = parse_recipe(
        {
            "model": str(artifact),
            "eval": {"data": "digits", "split": "test", "limit": 16, "robustness": False},
            "calib": {"data": "digits", "n": 8},
            "bench": {"batch_sizes": [4], "threads": 2, "repeats": 2, "latency_runs": 3},
            "deploy": {"runtime": "torch-bf16"},
        }
    )
    _, report = run_recipe(recipe, tmp_path / "out")
    assert [v["name"] for v in report["variants"]] == ["baseline", "baseline @ torch-bf16"]
    assert report["runtime"] == {"chosen": "torch-bf16"}
