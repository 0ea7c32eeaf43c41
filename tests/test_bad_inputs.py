"""Bad input through the CLI, as a user would type it: exit 2, one ``error: ...`` line, inputs untouched, no output.

:data:`CASES` is a module-level table so ``benchmarks/reliability.py`` runs the very same inputs outside pytest.
Each case builds its inputs in an empty directory and returns the argv; :func:`run_case` snapshots every file of
that directory (bytes hash) before and after, so one comparison proves "inputs never modified", "no output
created" and "an existing output unchanged, no stage directories left behind".
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

TINY_KW = dict(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3, num_classes=10)
TINY_ARCH = json.dumps({"name": "vit_tiny_patch16_224", "kwargs": TINY_KW})
ROOT = Path(__file__).resolve().parents[1]


# -- inputs ---------------------------------------------------------------------------------------------
_CACHE: dict[str, Path] = {}


def _cache_dir() -> Path:
    if "dir" not in _CACHE:
        _CACHE["dir"] = Path(tempfile.mkdtemp(prefix="vitkit-bad-inputs-"))
        atexit.register(shutil.rmtree, _CACHE["dir"], True)
    return _CACHE["dir"]


def tiny_artifact(d: Path, name: str = "model", **kw) -> Path:
    """A copy of a tiny random-init artifact (built once per process) at ``d / name``."""
    from vitkit.artifact import save_artifact

    from .conftest import make_tiny

    key = "art" + json.dumps(kw, sort_keys=True)
    if key not in _CACHE:
        _CACHE[key] = save_artifact(make_tiny(**kw), None, None, _cache_dir() / f"art{len(_CACHE)}")
    return Path(shutil.copytree(_CACHE[key], d / name))


def tiny_state(**kw) -> dict[str, torch.Tensor]:
    from .conftest import make_tiny

    return {k: v.contiguous() for k, v in make_tiny(**kw).state_dict().items()}


def write_ckpt(path: Path, state: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    save_file(state, str(path))
    return path


def poisoned_artifact(d: Path, value: float) -> Path:
    """A tiny artifact whose first block's qkv weight holds ``value`` (NaN / Inf)."""
    art = tiny_artifact(d)
    state = tiny_state()
    state["blocks.0.attn.qkv.weight"][0, 0] = value
    write_ckpt(art / "model.safetensors", state)
    return art


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def recipe(d: Path, body: str, name: str = "r.yaml") -> str:
    """Write the recipe ``body`` (``model: model`` → the absolute path of a tiny artifact in ``d``)."""
    art = tiny_artifact(d)
    return str(write(d / name, body.replace("model: model", f"model: {art}")))


class Pickled:
    """Any class at all: ``torch.load(weights_only=True)`` must refuse to build it."""

    def __init__(self):
        self.w = torch.zeros(2)


# -- the table ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One bad input: ``setup(dir)`` builds the inputs in an empty ``dir`` and returns the CLI argv."""

    id: str
    what: str
    setup: Callable[[Path], list[str]]
    expect: str  # a substring of the error line (case-insensitive): it names the problem
    rc: int = 2
    xfail: str = ""  # known failure, being fixed elsewhere (reason)
    marks: tuple = field(default=())
    around: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext  # e.g. an interrupted write


def _fill(cmd, **values) -> list[str]:
    out = []
    for c in cmd:
        for k, v in values.items():
            c = c.replace("{" + k + "}", str(v))
        out.append(c)
    return out


def _art_cmd(*cmd: str) -> Callable[[Path], list[str]]:
    """``cmd`` with ``{art}`` → a tiny artifact, ``{d}`` → the case directory."""

    def setup(d: Path) -> list[str]:
        art = tiny_artifact(d)
        return _fill(cmd, art=art, d=d)

    return setup


def _ckpt_cmd(data: Callable[[Path], None], *cmd: str) -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        data(d / "ckpt.safetensors")
        return _fill(cmd, ckpt=d / "ckpt.safetensors", d=d)

    return setup


def _valid_bytes() -> bytes:
    from safetensors.torch import save

    return save(tiny_state())


def _pickled(d: Path) -> list[str]:
    torch.save({"model": Pickled(), "w": torch.zeros(3)}, d / "ckpt.pth")
    return ["eval", str(d / "ckpt.pth"), "--arch", TINY_ARCH, "--data", "digits", "--limit", "8"]


def _poisoned(value: float, *cmd: str) -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        art = poisoned_artifact(d, value)
        return _fill(cmd, art=art, d=d)

    return setup


def _poisoned_run(d: Path) -> list[str]:
    poisoned_artifact(d, float("nan"))
    body = "eval: {data: digits, limit: 16}\nbench: {batch_sizes: [1], repeats: 1}\n"
    r = write(d / "r.yaml", f"model: {d / 'model'}\n" + body)
    return ["run", str(r), "-o", str(d / "out")]


def _shape_ckpt(d: Path) -> list[str]:
    write_ckpt(d / "ckpt.safetensors", tiny_state(embed_dim=24, num_heads=2))
    return ["eval", str(d / "ckpt.safetensors"), "--arch", TINY_ARCH, "--data", "digits", "--limit", "8"]


def _classes_ckpt(d: Path) -> list[str]:
    write_ckpt(d / "ckpt.safetensors", tiny_state(num_classes=5))
    return ["eval", str(d / "ckpt.safetensors"), "--arch", TINY_ARCH, "--data", "digits", "--limit", "8"]


def _merge(models: list[dict], body: str = "") -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        names = []
        for i, kw in enumerate(models):
            write_ckpt(d / f"m{i}.safetensors", tiny_state(seed=i, **kw))
            names.append(f"m{i}.safetensors")
        text = "merge_method: task_arithmetic\nbase_model: m0.safetensors\nmodels:\n"
        text += "".join(f"  - model: {n}\n" for n in names[1:]) + body
        return ["merge", str(write(d / "merge.yaml", text)), "-o", str(d / "out")]

    return setup


def _merge_yaml(text: str) -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        write_ckpt(d / "m0.safetensors", tiny_state())
        write_ckpt(d / "m1.safetensors", tiny_state(seed=1))
        return ["merge", str(write(d / "merge.yaml", text)), "-o", str(d / "out")]

    return setup


def _run(body: str, out: str = "out") -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        return ["run", recipe(d, body), "-o", str(d / out)]

    return setup


def _run_into_file_parent(d: Path) -> list[str]:
    write(d / "blocker", "a regular file where the output's parent directory should be\n")
    return ["run", recipe(d, "model: model\n"), "-o", str(d / "blocker" / "out")]


def _run_into_non_artifact(d: Path) -> list[str]:
    write(d / "out" / "notes.txt", "my own files, not an artifact\n")
    return ["run", recipe(d, "model: model\n"), "-o", str(d / "out")]


class SkipCase(Exception):
    """The case cannot be built here (e.g. root bypasses a read-only directory)."""


def _run_into_read_only(d: Path) -> list[str]:
    (d / "ro").mkdir()
    (d / "ro").chmod(0o555)
    if os.access(d / "ro", os.W_OK):
        (d / "ro").chmod(0o755)
        raise SkipCase("this user bypasses directory permissions (root): a read-only directory is still writable")
    return ["run", recipe(d, "model: model\n"), "-o", str(d / "ro" / "out")]


def _search_space(d: Path) -> list[str]:
    art = tiny_artifact(d)
    space = write(d / "space.yaml", "tome: {r: [1, 2\n")
    return ["search", "--model", str(art), "--space", str(space), "--data", "digits", "-o", str(d / "out")]


def _bench_over_file(d: Path) -> list[str]:
    art = tiny_artifact(d)
    write(d / "out", "a regular file\n")
    return ["bench", str(art), "--batch-sizes", "1", "--repeats", "1", "-o", str(d / "out")]


def _one_channel(d: Path) -> list[str]:
    from vitkit.artifact import save_artifact

    from .conftest import make_tiny

    model = make_tiny(in_chans=1, pretrained_cfg_overlay=dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
    save_artifact(model, None, None, d / "model")
    return ["eval", str(d / "model"), "--data", "digits", "--limit", "8"]


def _empty_folder(d: Path) -> list[str]:
    art = tiny_artifact(d)
    write(d / "images" / "cat" / "readme.txt", "no images here\n")
    write(d / "images" / "dog" / "notes.md", "none here either\n")
    return ["eval", str(art), "--data", f"imagefolder:{d / 'images'}", "--limit", "8"]


def _hf_folder(config: dict, shard_index: bool = False) -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        folder = d / "hf"
        write(folder / "config.json", json.dumps(config))
        if shard_index:
            index = {"metadata": {}, "weight_map": {"vit.embeddings.cls_token": "model-00001-of-00002.safetensors"}}
            write(folder / "model.safetensors.index.json", json.dumps(index))
        else:
            write_ckpt(folder / "model.safetensors", {"w": torch.zeros(2)})
        return ["eval", str(folder), "--data", "digits", "--limit", "8"]

    return setup


@contextlib.contextmanager
def interrupted_save():
    """Ctrl-C in the middle of save_artifact: the weights are already in the stage dir when it hits."""
    import vitkit.artifact as artifact

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    original = artifact.resolved_recipe
    artifact.resolved_recipe = ctrl_c
    try:
        yield
    finally:
        artifact.resolved_recipe = original


def _bench_over_artifact(d: Path) -> list[str]:
    art = tiny_artifact(d)
    tiny_artifact(d, "old", seed=1)
    return ["bench", str(art), *BENCH, "-o", str(d / "old")]


def _hf_text_config(d: Path) -> list[str]:
    write(d / "hf" / "config.json", "model_type: vit\n")
    write_ckpt(d / "hf" / "model.safetensors", {"w": torch.zeros(2)})
    return ["eval", str(d / "hf"), "--data", "digits", "--limit", "8"]


HF_VIT = {
    "model_type": "vit",
    "architectures": ["ViTForImageClassification"],
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
    "num_channels": 3,
}

EVAL = ("--data", "digits", "--limit", "8")
BENCH = ("--batch-sizes", "1", "--repeats", "1")

CASES: list[Case] = [
    # checkpoint files
    Case(
        "corrupt-ckpt",
        "random bytes named .safetensors",
        _ckpt_cmd(lambda p: p.write_bytes(bytes(range(256)) * 16), "eval", "{ckpt}", "--arch", TINY_ARCH, *EVAL),
        "ckpt.safetensors",
    ),
    Case(
        "truncated-ckpt",
        "first half of a valid .safetensors",
        _ckpt_cmd(
            lambda p: p.write_bytes(_valid_bytes()[: len(_valid_bytes()) // 2]),
            "eval",
            "{ckpt}",
            "--arch",
            TINY_ARCH,
            *EVAL,
        ),
        "ckpt.safetensors",
    ),
    Case(
        "empty-ckpt",
        "a 0-byte .safetensors",
        _ckpt_cmd(lambda p: p.write_bytes(b""), "eval", "{ckpt}", "--arch", TINY_ARCH, *EVAL),
        "ckpt.safetensors",
    ),
    Case("pickled-object", ".pth holding a Python object", _pickled, "ckpt.pth"),
    Case("missing-ckpt", "checkpoint path that does not exist", lambda d: ["eval", str(d / "nope.pt"), *EVAL], "nope"),
    # NaN / Inf weights
    Case("nan-eval", "NaN weight → eval", _poisoned(float("nan"), "eval", "{art}", *EVAL), "nan"),
    Case("nan-run", "NaN weight → run a recipe", _poisoned_run, "nan"),
    Case("inf-export", "Inf weight → export", _poisoned(float("inf"), "export", "{art}", "-o", "{d}/out"), "inf"),
    Case("nan-bench", "NaN weight → bench", _poisoned(float("nan"), "bench", "{art}", *BENCH), "nan"),
    # shapes
    Case("shape-mismatch", "checkpoint of embed 24 vs --arch embed 48", _shape_ckpt, "shape"),
    Case("num-classes-mismatch", "5-class checkpoint vs 10-class --arch", _classes_ckpt, "head"),
    Case("merge-shapes", "merge.yaml: models of different widths", _merge([{}, {"embed_dim": 24}]), "shape"),
    Case("merge-archs", "merge.yaml: models of different depths", _merge([{}, {"depth": 2}]), "m1.safetensors"),
    # recipes and transform configs
    Case("recipe-unknown-key", "recipe key typo `stpes`", _run("model: model\nstpes: []\n"), "stpes"),
    Case("transform-unknown-key", "tome config with `rr`", _run("model: model\nsteps:\n  - tome: {rr: 2}\n"), "rr"),
    Case("unknown-transform", "recipe step `tomee`", _run("model: model\nsteps:\n  - tomee: {r: 2}\n"), "tomee"),
    Case("yaml-syntax", "recipe with a YAML syntax error", _run("model: model\nsteps: [tome: {r: 2\n"), "yaml"),
    Case("yaml-wrong-type", "tome r: 'many'", _run("model: model\nsteps:\n  - tome: {r: many}\n"), "r"),
    Case("yaml-list-not-dict", "recipe that is a list", _run("- model: model\n- steps: []\n"), "mapping"),
    Case(
        "yaml-list-for-eval",
        "eval: [digits] (a list where a dict goes)",
        _run("model: model\neval: [digits]\n"),
        "eval",
    ),
    Case(
        "negative-ratio",
        "prune ratio -0.5 in a recipe",
        _run("model: model\nsteps:\n  - prune: {ratio: -0.5}\n"),
        "ratio",
    ),
    Case(
        "negative-ratio-cli",
        "vitkit prune --ratio -0.5",
        _art_cmd("prune", "{art}", "--ratio", "-0.5", "-o", "{d}/out"),
        "ratio",
    ),
    Case("tome-r-negative", "tome r: -1", _run("model: model\nsteps:\n  - tome: {r: -1}\n"), "r must be"),
    Case(
        "ratio-one-cli",
        "vitkit prune --ratio 1.0",
        _art_cmd("prune", "{art}", "--ratio", "1", "-o", "{d}/out"),
        "ratio",
    ),
    Case(
        "merge-unknown-method",
        "merge_method: tiez",
        _merge_yaml("merge_method: tiez\nmodels: [{model: m1.safetensors}]\n"),
        "tiez",
    ),
    Case(
        "merge-unknown-key",
        "merge.yaml key `paramters`",
        _merge_yaml(
            "merge_method: ties\nbase_model: m0.safetensors\nmodels: [{model: m1.safetensors}]\nparamters: {}\n"
        ),
        "paramters",
    ),
    Case(
        "merge-models-not-list",
        "merge.yaml models: a string where a list goes",
        _merge_yaml("merge_method: task_arithmetic\nbase_model: m0.safetensors\nmodels: m1.safetensors\n"),
        "models",
    ),
    Case(
        "ptq-diff-attention",
        "ptq on timm's DiffAttention (an Attention variant vitkit does not quantize)",
        _run(
            "model: vit_tiny_patch16_224\nmodel_kwargs: {img_size: 32, patch_size: 8, embed_dim: 48, depth: 2, "
            "num_heads: 3, num_classes: 10, attn_layer: diff}\nsteps:\n  - ptq: {calib_images: 8}\n"
            "calib: {data: digits, n: 8}\n"
        ),
        "DiffAttention",
    ),
    Case("recipe-unknown-dataset", "recipe eval data: nosuch", _run("model: model\neval: {data: nosuch}\n"), "nosuch"),
    # names
    Case(
        "unknown-model",
        "timm name that does not exist",
        lambda d: ["eval", "vit_nosuch_model", *EVAL],
        "vit_nosuch_model",
    ),
    Case("unknown-dataset", "--data nosuch", _art_cmd("eval", "{art}", "--data", "nosuch"), "nosuch"),
    Case(
        "export-format", "export --format xyz", _art_cmd("export", "{art}", "--format", "xyz", "-o", "{d}/out"), "xyz"
    ),
    # outputs
    Case("output-parent-is-file", "-o under a regular file", _run_into_file_parent, "blocker"),
    Case("output-not-artifact", "-o an existing non-artifact dir", _run_into_non_artifact, "not a vitkit artifact"),
    Case("output-parent-read-only", "-o under a read-only directory", _run_into_read_only, "not writable"),
    Case("bench-output-is-file", "bench -o over a regular file", _bench_over_file, "out"),
    Case(
        "ctrl-c-during-save",
        "KeyboardInterrupt midway through save_artifact over an existing artifact",
        _bench_over_artifact,
        "interrupted",
        rc=130,
        around=interrupted_save,
    ),
    # architectures
    Case(
        "arch-bad-heads",
        "--arch embed_dim 50, num_heads 3",
        _ckpt_cmd(
            lambda p: write_ckpt(p, tiny_state()),
            "eval",
            "{ckpt}",
            "--arch",
            json.dumps({"name": "vit_tiny_patch16_224", "kwargs": {**TINY_KW, "embed_dim": 50}}),
            *EVAL,
        ),
        "divisible",
    ),
    Case(
        "arch-unknown-attn-layer",
        "--arch attn_layer: 'nosuch'",
        _ckpt_cmd(
            lambda p: write_ckpt(p, tiny_state()),
            "eval",
            "{ckpt}",
            "--arch",
            json.dumps({"name": "vit_tiny_patch16_224", "kwargs": {**TINY_KW, "attn_layer": "nosuch"}}),
            *EVAL,
        ),
        "attn_layer",
    ),
    Case(
        "arch-bad-json",
        "--arch '{name: vit'",
        _ckpt_cmd(lambda p: write_ckpt(p, tiny_state()), "eval", "{ckpt}", "--arch", "{name: vit", *EVAL),
        "--arch",
    ),
    Case("one-channel-mean", "1-channel model, 3-value mean", _one_channel, "mean"),
    # other commands
    Case(
        "deploy-runtime",
        "deploy --runtime warp-drive",
        _art_cmd("deploy", "{art}", "--runtime", "warp-drive", "-o", "{d}/out"),
        "warp-drive",
    ),
    Case(
        "early-exit-head",
        "early-exit --head mlp9",
        _art_cmd("early-exit", "{art}", "--head", "mlp9", "--epochs", "0", "--data", "digits", "-o", "{d}/out"),
        "mlp9",
    ),
    Case("search-space-yaml", "search --space with a YAML syntax error", _search_space, "yaml"),
    Case(
        "peft-missing-adapter",
        "peft import of a folder that does not exist",
        _art_cmd("peft", "import", "{art}", "{d}/nope", "-o", "{d}/out"),
        "nope",
    ),
    Case(
        "qdq-not-ptq",
        "export-qdq of an artifact without ptq",
        _art_cmd("export-qdq", "{art}", "-o", "{d}/m.onnx"),
        "ptq",
    ),
    Case(
        "int-eval-not-ptq",
        "int-eval of an artifact without ptq",
        _art_cmd("int-eval", "{art}", "--data", "digits", "-n", "8"),
        "ptq",
    ),
    Case("batch-sizes-zero", "bench --batch-sizes 0", _art_cmd("bench", "{art}", "--batch-sizes", "0"), "batch sizes"),
    Case("images-zero", "export --images 0", _art_cmd("export", "{art}", "--images", "0", "-o", "{d}/out"), "images"),
    Case("unknown-command", "vitkit evaluate (a typo of eval)", lambda d: ["evaluate", "x"], "invalid choice"),
    Case("missing-argument", "vitkit merge without -o", lambda d: ["merge", str(write(d / "m.yaml", "{}\n"))], "-o"),
    Case(
        "eval-limit-negative",
        "eval --limit -5",
        _art_cmd("eval", "{art}", "--data", "digits", "--limit", "-5"),
        "limit",
    ),
    Case(
        "bench-repeats-zero",
        "bench --repeats 0",
        _art_cmd("bench", "{art}", "--repeats", "0", "--batch-sizes", "1"),
        "repeats",
    ),
    Case(
        "export-opset",
        "export --opset 3",
        _art_cmd("export", "{art}", "--opset", "3", "--data", "digits", "-o", "{d}/out"),
        "opset",
    ),
    Case(
        "prune-importance",
        "prune --importance nosuch",
        _art_cmd("prune", "{art}", "--importance", "nosuch", "--data", "digits", "-o", "{d}/out"),
        "importance",
    ),
    Case(
        "merge-density",
        "ties density: 2",
        _merge_yaml(
            "merge_method: ties\nbase_model: m0.safetensors\nmodels: [{model: m1.safetensors}]\n"
            "parameters: {density: 2}\n"
        ),
        "density",
    ),
    Case(
        "zero-shot-missing",
        "eval --zero-shot of a missing file",
        _art_cmd("eval", "{art}", "--zero-shot", "{d}/nope.safetensors", "--data", "digits"),
        "nope.safetensors",
    ),
    # data
    Case(
        "data-missing",
        "imagefolder that does not exist",
        _art_cmd("eval", "{art}", "--data", "imagefolder:{d}/nowhere"),
        "nowhere",
    ),
    Case("data-no-images", "image folder with no images", _empty_folder, "image"),
    # transformers folders
    Case("hf-config-not-json", "config.json that is not JSON", _hf_text_config, "config.json"),
    Case("hf-unknown-type", "config.json model_type: bogus", _hf_folder({**HF_VIT, "model_type": "bogus"}), "bogus"),
    Case(
        "hf-missing-shard",
        "index names a shard that is not there",
        _hf_folder(HF_VIT, shard_index=True),
        "model-00001-of-00002",
    ),
]


# -- running one case ------------------------------------------------------------------------------------
def snapshot(d: Path) -> dict[str, str]:
    """Relative path → sha256 of every file (and ``<dir>`` for every directory) under ``d``."""
    out = {}
    for p in sorted(d.rglob("*")):
        rel = str(p.relative_to(d))
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass
class Outcome:
    rc: int
    stderr: str
    changed: list[str]  # paths created, removed or modified under the case directory
    seconds: float
    argv: list[str] = field(default_factory=list)

    @property
    def lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]

    @property
    def message(self) -> str:
        return self.lines[0] if self.lines else ""

    def problems(self, case: Case) -> list[str]:
        """What breaks the promise for ``case`` (empty: a clean error)."""
        bad = []
        if self.rc != case.rc:
            bad.append(f"rc {self.rc} (want {case.rc})")
        if "Traceback" in self.stderr:
            bad.append("traceback")
        if len(self.lines) != 1 or not self.message.startswith("error: "):
            bad.append(f"{len(self.lines)} stderr lines")
        elif case.expect.lower() not in self.message.lower():
            bad.append(f"message lacks {case.expect!r}")
        if self.changed:
            bad.append(f"files changed: {self.changed[:3]}")
        return bad


def run_case(case: Case, d: Path) -> Outcome:
    """Build the inputs in ``d``, run the CLI in-process, capture stdout/stderr (logging included)."""
    from vitkit.cli import main

    argv = case.setup(d)
    before = snapshot(d)
    err, out = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)  # log lines reach a user's terminal: count them as stderr lines
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), warnings.catch_warnings(), case.around():
            warnings.simplefilter("ignore")
            try:
                rc = main(argv)
            except SystemExit as exc:  # argparse
                rc = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # an uncaught exception is what the user would see as a traceback
                import traceback

                traceback.print_exc(file=err)
                rc = 1
    finally:
        root.removeHandler(handler)
    seconds = time.perf_counter() - t0
    after = snapshot(d)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    return Outcome(rc, err.getvalue(), changed, seconds, argv)


# -- pytest ---------------------------------------------------------------------------------------------
def _param(case: Case):
    marks = list(case.marks)
    if case.xfail:
        marks.append(pytest.mark.xfail(strict=True, reason=case.xfail))
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input_is_one_clean_line(case, tmp_path):
    try:
        outcome = run_case(case, tmp_path)
    except SkipCase as exc:
        pytest.skip(str(exc))
    assert not outcome.problems(case), f"{case.id}: {outcome.problems(case)}\n{outcome.stderr[-2000:]}"


def test_table_is_big_enough():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


SIGINT_SCRIPT = """
import signal, sys, time
import vitkit.artifact as artifact
from vitkit.cli import main

# a user at a terminal has Ctrl-C raise KeyboardInterrupt; a suite started as a background job (`make test &`)
# hands its children SIGINT ignored, which Python then keeps
signal.signal(signal.SIGINT, signal.default_int_handler)

def slow(*args, **kwargs):  # the weights are in the stage dir; the user presses Ctrl-C now
    print("WRITING", flush=True)
    time.sleep(60)

artifact.resolved_recipe = slow
sys.exit(main(sys.argv[1:]))
"""


def sigint_during_save(d: Path) -> Outcome:
    """A real SIGINT (a user's Ctrl-C) to a subprocess while save_artifact writes over an existing artifact."""
    args = _bench_over_artifact(d)
    before = snapshot(d)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGINT_SCRIPT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        for line in proc.stdout:
            if "WRITING" in line:
                break
        started = bool(list(d.glob(".old.stage-*")))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    after = snapshot(d)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if not started:
        err += "\nthe save had not started when SIGINT was sent"
    return Outcome(proc.returncode, err, changed, time.perf_counter() - t0, args)


SIGINT_CASE = Case(
    "sigint-subprocess", "real SIGINT to `vitkit bench -o OLD` mid-save", _bench_over_artifact, "interrupted", rc=130
)


def test_sigint_during_save_keeps_the_old_artifact(tmp_path):
    """Exit 130 with one line; the old artifact byte-identical and no stage directory left behind."""
    outcome = sigint_during_save(tmp_path)
    assert not outcome.problems(SIGINT_CASE), f"{outcome.problems(SIGINT_CASE)}\n{outcome.stderr[-2000:]}"


def test_read_only_parent_refused_as_a_non_root_user_would_be(tmp_path, monkeypatch):
    """Root bypasses permissions, so simulate what ``os.access`` says to a normal user about a read-only dir."""
    import vitkit.artifact as artifact

    real_access = os.access
    monkeypatch.setattr(artifact.os, "access", lambda p, mode: False if Path(p).name == "ro" else real_access(p, mode))
    case = Case("read-only", "-o under a read-only directory", _run_into_read_only_simulated, "not writable")
    outcome = run_case(case, tmp_path)
    assert not outcome.problems(case), f"{outcome.problems(case)}\n{outcome.stderr[-2000:]}"


def _run_into_read_only_simulated(d: Path) -> list[str]:
    (d / "ro").mkdir()
    return ["run", recipe(d, "model: model\n"), "-o", str(d / "ro" / "out")]
