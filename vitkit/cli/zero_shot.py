"""``vitkit zero-shot-embed``: write the class-prompt embedding file that ``vitkit eval --zero-shot`` and a
recipe's ``eval: {zero_shot: FILE}`` read, from an open_clip model and a list of class names."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError


def add_commands(sub) -> None:
    s = sub.add_parser("zero-shot-embed", help="write class-prompt text embeddings of an open_clip model")
    s.add_argument("model", help="open_clip:ARCH/PRETRAINED (e.g. open_clip:ViT-B-32/openai)")
    s.add_argument(
        "--classes", required=True, help="class names in label order: 'zero,one,...' or a file with one per line"
    )
    s.add_argument(
        "--template",
        action="append",
        default=None,
        help="prompt with {} for the class name (repeatable; default 'a photo of a {}.')",
    )
    s.add_argument("-o", "--out", required=True, help="the .safetensors file to write")
    s.set_defaults(func=cmd_zero_shot_embed)


def read_classnames(text: str) -> list[str]:
    """A comma-separated list, or a file with one class name per line."""
    path = Path(text).expanduser()
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"no class names in {text!r}: give 'zero,one,...' or a file with one name per line")
    return names


def cmd_zero_shot_embed(args) -> int:
    from ..models.open_clip import DEFAULT_TEMPLATES, PREFIX, write_class_embeddings
    from ..ui import console

    if not str(args.model).startswith(PREFIX):
        raise ConfigError(f"zero-shot-embed needs an open_clip model name like {PREFIX}ViT-B-32/openai")
    templates = tuple(args.template or DEFAULT_TEMPLATES)
    if any("{}" not in t for t in templates):
        raise ConfigError("each --template needs {} where the class name goes, e.g. 'a photo of a {}.'")
    names = read_classnames(args.classes)
    with console().status("encoding class prompts..."):
        out = write_class_embeddings(args.out, args.model, names, templates)
    console().print(f"{len(names)} class embeddings ({len(templates)} template(s)) written to {out}")
    return 0
