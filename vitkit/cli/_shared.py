"""What every model-loading command shares: load through ``vitkit.load`` with ``--arch``, then refuse non-finite
weights (one line naming the first bad tensor, the same check ``vitkit bench`` and export run)."""

from __future__ import annotations

from ..ui import parse_arch

ARCH_HELP = "timm name, or JSON/YAML {name, kwargs} (bare checkpoint files, custom kwargs); recorded in the artifact"


def load_model(spec, arch_text: str | None = None, *, arch=None):
    """``vitkit.load(spec, arch=...)`` from ``--arch`` text (or a parsed ``arch``), checked finite."""
    from ..bench.core import check_finite
    from ..models import load

    model = load(spec, arch=arch if arch is not None else parse_arch(arch_text))
    check_finite(model)
    return model


def add_arch(parser, prefix: str = "") -> None:
    parser.add_argument("--arch", default=None, help=f"{prefix} {ARCH_HELP}".strip())
