"""``vitkit`` command line: list, train, eval, bench, run, export, demo, and one module per method family
(merge, prune, quant, adapt, early-exit, search) adding its sub-commands.

Bad input exits with code 2 and a one-line ``error: ...`` (add ``--debug`` for the traceback).
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
