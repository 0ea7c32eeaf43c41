"""Every benchmark script still imports (they are not run by the suite, so a moved name would go unnoticed)."""

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_"))
#: the ones run as commands (the rest, e.g. merge_testbed, are modules the scripts import)
COMMANDS = [n for n in SCRIPTS if '__name__ == "__main__"' in (ROOT / "benchmarks" / f"{n}.py").read_text()]


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_script_imports(name, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    module = importlib.import_module(f"benchmarks.{name}")
    assert module.__doc__, f"benchmarks/{name}.py needs a docstring saying what it writes"
    sys.modules.pop(f"benchmarks.{name}", None)


@pytest.mark.parametrize("name", COMMANDS)
def test_benchmark_script_parses_its_options(name):
    import subprocess

    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()
