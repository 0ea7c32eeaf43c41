"""``vitkit peft export|import``: LoRA weights between vitkit artifacts and Hugging Face peft directories.

* ``vitkit peft export ARTIFACT -o DIR`` — the LoRA layers of an (unmerged) artifact as a peft LoRA dir.
* ``vitkit peft import MODEL ADAPTER_DIR -o OUT [--merge]`` — add a peft LoRA to a base model (timm name,
  preset, checkpoint or artifact) and write a vitkit artifact; ``--merge`` folds it into plain weights.

Bad input exits with code 2 and one ``error: ...`` line (the main CLI's handler).
"""

from __future__ import annotations


def add_commands(sub) -> None:
    p = sub.add_parser("peft", help="LoRA weights to/from Hugging Face peft's format (no peft needed)")
    peft_sub = p.add_subparsers(dest="peft_command", required=True)
    s = peft_sub.add_parser("export", help="write the LoRA layers of an artifact as a peft LoRA directory")
    s.add_argument("model", help="vitkit artifact directory holding LoRA layers (not merged back)")
    s.add_argument("-o", "--out", required=True, help="peft directory to write")
    s.set_defaults(func=cmd_export)
    s = peft_sub.add_parser("import", help="add a peft LoRA directory to a base model and save an artifact")
    s.add_argument("model", help="base model: timm name, preset, checkpoint file or artifact dir")
    s.add_argument("adapter", help="peft directory (adapter_config.json + adapter_model.safetensors)")
    s.add_argument("-o", "--out", required=True, help="artifact directory to write")
    s.add_argument("--arch", default=None, help="timm name or JSON {name, kwargs} for bare checkpoint files")
    s.add_argument("--merge", action="store_true", help="fold LoRA into the weights (a plain timm model)")
    s.set_defaults(func=cmd_import)


def cmd_export(args) -> int:
    from ..artifact import is_artifact
    from ..errors import CheckpointError
    from ..interop.peft import export_peft
    from ..models import load
    from ..ui import console

    if not is_artifact(args.model):
        raise CheckpointError(f"{args.model} is not a vitkit artifact: export needs an artifact with LoRA layers")
    model = load(args.model)
    out = export_peft(model, args.out)
    console().print(f"peft LoRA written to {out}")
    return 0


def cmd_import(args) -> int:
    from ..api import merge_back
    from ..artifact import save_artifact
    from ..interop.peft import import_peft
    from ..models import load
    from ..ui import console, parse_arch

    model = load(args.model, arch=parse_arch(args.arch))
    import_peft(model, args.adapter)
    if args.merge:
        merge_back(model)
    recipe = {"model": str(args.model), "peft": str(args.adapter), "merge": bool(args.merge)}
    save_artifact(model, recipe, None, args.out, title=f"vitkit peft import: {args.adapter}")
    console().print(f"{'merged' if args.merge else 'LoRA'} artifact written to {args.out}")
    return 0
