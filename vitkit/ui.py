"""Console and progress bars for the command line (rich), and the parsers of arguments every command shares."""

from __future__ import annotations

import json
import os
import sys
import zlib
from pathlib import Path

from .errors import ConfigError

#: Exit status for bad input: the CLI prints one ``error: ...`` line and returns it.
EXIT_BAD_INPUT = 2


def console():
    from rich.console import Console

    wide = None if sys.stdout.isatty() else 160  # pipes and CI logs get the whole table
    return Console(stderr=False, highlight=False, soft_wrap=True, width=wide)


def progress():
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    )


def parse_arch(text: str | None):
    """``--arch``: a timm name, or JSON / YAML flow ``{"name": ..., "kwargs": {...}}`` (bare checkpoint files, or
    kwargs on top of a name: ``{name: vit_small_patch16_224, kwargs: {act_layer: relu}}``)."""
    if text is None:
        return None
    text = text.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            import yaml

            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                raise ConfigError(f"--arch is neither valid JSON nor YAML: {exc}") from None
            if not isinstance(value, dict):
                raise ConfigError(f"--arch must be a name or {{name, kwargs}}, got {text!r}") from None
            return value
    return text


def import_modules(names, *, where: str = "--import", base: str | Path | None = None) -> list[str]:
    """Import user code before anything is built (so it can ``timm.models.register_model`` architectures or add
    vitkit presets / transforms): each entry a module name importable from the current directory, or a ``.py``
    path (relative to the current directory, else to ``base``, e.g. the recipe's folder). A failing import raises
    one ConfigError naming the module and its error. Returns the imported module names."""
    import importlib
    import importlib.util

    done = []
    for raw in names or ():
        name = str(raw).strip()
        try:
            if name.endswith(".py") or "/" in name or os.sep in name:
                path = Path(name).expanduser()
                if not path.exists() and base is not None and (Path(base) / path).exists():
                    path = Path(base) / path
                if not path.is_file():
                    raise FileNotFoundError(f"no such file {str(path)!r}")
                path = path.resolve()
                mod_name = f"vitkit_user_{path.stem}_{zlib.crc32(str(path).encode()):08x}"
                if mod_name not in sys.modules:
                    spec = importlib.util.spec_from_file_location(mod_name, path)
                    module = importlib.util.module_from_spec(spec)
                    sys.modules[mod_name] = module
                    try:
                        spec.loader.exec_module(module)
                    except BaseException:
                        sys.modules.pop(mod_name, None)
                        raise
            else:
                if os.getcwd() not in sys.path and "" not in sys.path:
                    sys.path.insert(0, os.getcwd())
                mod_name = name
                importlib.import_module(name)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            raise ConfigError(
                f"{where} {name!r} failed: {reason} (it must be a module importable from the current directory "
                "or a .py file path)"
            ) from None
        done.append(mod_name)
    return done
