"""Console and progress bars for the command line (rich), and the parsers of arguments every command shares."""

from __future__ import annotations

import json
import sys

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
    """``--arch``: a timm name, or JSON ``{"name": ..., "kwargs": {...}}`` for bare checkpoint files."""
    if text is None:
        return None
    text = text.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--arch is not valid JSON: {exc}") from None
    return text
