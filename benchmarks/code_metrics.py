"""Layering and size metrics of the ``vitkit`` package (the figures issue 21 asks for before and after).

    python benchmarks/code_metrics.py            # one table on stdout
    python benchmarks/code_metrics.py --json     # the same as JSON

The layer order is read from the ``[tool.importlinter]`` layers contract in ``pyproject.toml`` (the one
``lint-imports`` enforces in ``make test``); a module outside every layer counts under ``unplaced``.
Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import tomllib
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vitkit"  # --root measures another checkout's package against this repo's layer contract
FILE_LINES, FUNC_LINES = 400, 80
#: timm's model classes, or an attribute / state-dict key of timm's ViT modules, named in code (docstrings and
#: comments are skipped; ``host.blocks(model)``, a call of the adapter's method, is not an attribute access).
TIMM_INTERNALS = re.compile(
    r"\btimm\.(models|layers)\b|\bfrom timm import|\bimport timm\b|"
    r"\.(patch_embed|pos_embed|_pos_embed|cls_token|reg_token|dist_token|blocks|norm1|norm2|fc_norm|head_dist|"
    r"num_prefix_tokens|qkv|fc1|fc2|ls1|ls2|q_norm|k_norm|attn_drop|head_drop|norm_pre)\b(?!\()|"
    r"[\"'](blocks\.|head_dist|patch_embed|pos_embed|cls_token)"
)
HOST_DIRS = ("adapters", "models")


def modules(package: Path = PACKAGE) -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def import_graph(mods: dict[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for name, (path, is_pkg) in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for target in targets:
                if not target.startswith("vitkit"):
                    continue
                while target not in mods and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target != name:
                    edges[name].add(target)
    return edges


def layer_table() -> dict[str, int]:
    """Top-level module → rank (0 = bottom) from the import-linter layers contract."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text()).get("tool", {}).get("importlinter", {})
    for contract in config.get("contracts", []):
        if contract.get("type") == "layers":
            layers = contract["layers"]
            return {m.strip(): len(layers) - 1 - i for i, layer in enumerate(layers) for m in re.split(r"[|:]", layer)}
    return {}


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; components with more than one module are import cycles."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return [c for c in out if len(c) > 1]


def code_lines(text: str) -> list[tuple[int, str]]:
    """(number, line) of the lines that are code: docstrings and comment-only lines dropped."""
    doc_lines: set[int] = set()
    for node in ast.walk(ast.parse(text)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                doc_lines.update(range(value.lineno, value.end_lineno + 1))
    return [
        (i, line)
        for i, line in enumerate(text.splitlines(), 1)
        if i not in doc_lines and not line.lstrip().startswith("#")
    ]


def measure(package: Path = PACKAGE) -> dict:
    mods = modules(package)
    edges = import_graph(mods)
    rank = layer_table()
    upward, unplaced = [], sorted({top(m) for m in mods if top(m) and top(m) not in rank})
    for a, targets in edges.items():
        for b in targets:
            ta, tb = top(a), top(b)
            if ta and tb and ta != tb and ta in rank and tb in rank and rank[tb] > rank[ta]:
                upward.append(f"{a} -> {b}")
    cycles = strongly_connected(edges)
    long_files, long_funcs, timm_lines = [], [], []
    for name, (path, _) in sorted(mods.items()):
        text = path.read_text()
        rel = path.relative_to(package.parent).as_posix()
        n = len(text.splitlines())
        if n > FILE_LINES:
            long_files.append(f"{rel} ({n})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > FUNC_LINES:
                    long_funcs.append(f"{rel}:{node.name} ({length})")
        if top(name) not in HOST_DIRS:
            timm_lines += [f"{rel}:{i}" for i, line in code_lines(text) if TIMM_INTERNALS.search(line.split("  #")[0])]
    return {
        "modules": len(mods),
        "upward_imports": sorted(upward),
        "cycles": cycles,
        "modules_in_cycles": sorted({m for c in cycles for m in c}),
        "unplaced_modules": unplaced,
        "files_over_400_lines": long_files,
        "functions_over_80_lines": long_funcs,
        "timm_lines_outside_adapters": timm_lines,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every item, not only the counts")
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout to measure (default: this one)")
    args = parser.parse_args()
    result = measure(args.root / "vitkit")
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print("| metric | count |\n|---|---|")
    for key, value in result.items():
        print(f"| {key.replace('_', ' ')} | {value if isinstance(value, int) else len(value)} |")
    if args.verbose:
        for key, value in result.items():
            if isinstance(value, list) and value:
                print(f"\n{key}:")
                print("\n".join(f"  {v}" for v in value))


if __name__ == "__main__":
    main()
