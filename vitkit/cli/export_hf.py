"""``vitkit export MODEL --format hf``: a ``transformers`` folder (config.json, model.safetensors, model card)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError
from ..ui import console, parse_arch

#: every value ``vitkit export --format`` takes
FORMATS = ("onnx", "hf")


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format --format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return fmt


def cmd_export_hf(args) -> int:
    from ..artifact import REPORT_JSON, is_artifact
    from ..interop.hf_export import CONFIG, EXPORT_KEY, RUNTIME_KEY, export_hf
    from ..models import load

    con = console()
    model = load(args.model, arch=parse_arch(args.arch))
    source = Path(str(args.model)).expanduser()
    report = None
    if is_artifact(source) and (source / REPORT_JSON).is_file():
        report = json.loads((source / REPORT_JSON).read_text())
    out = Path(args.out or f"{str(args.model).rstrip('/')}-hf")
    with con.status("writing the transformers folder and checking it reproduces the model..."):
        path = export_hf(model, out, report=report)
    config = json.loads((path / CONFIG).read_text())
    checks = config[EXPORT_KEY]["checks"]
    con.print(f"structure check passed: {checks['structure']}")
    parity = checks.get("parity") or {}
    if parity.get("status") == "passed":
        con.print(
            f"parity check passed: transformers' {parity['output']} equals the vitkit model's on {parity['images']} "
            f"random images (max |diff| {parity['max_abs_diff']:.2g})"
        )
    else:
        con.print(f"[yellow]parity not checked: {parity.get('why', 'unknown')}[/yellow]")
    if config.get(RUNTIME_KEY):
        names = ", ".join(r["name"] for r in config[RUNTIME_KEY])
        con.print(
            f"[yellow]runtime step(s) {names} recorded in config.json: transformers runs the model dense (the parity "
            f"check compares the dense model); vitkit.load({path}) re-applies them[/yellow]"
        )
    con.print(f"transformers folder (config.json, model.safetensors, README.md) written to {path}")
    return 0
