"""``vitkit convert SRC --from lucidrains|torchvision|auto [--heads N] ... -o out.safetensors | out/``.

Converts a lucidrains ``vit_pytorch.ViT`` or torchvision ``VisionTransformer`` state dict (``.pth`` / ``.pt`` /
``.safetensors``) into an exact timm model. ``-o x.safetensors`` writes the timm weights and prints the ``arch:``
block to put in a recipe (``model: x.safetensors`` + ``arch: {...}``); ``-o DIR`` writes a vitkit artifact, which
``vitkit run`` takes as ``model: DIR`` with no arch. The source file is only read.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

_log = logging.getLogger(__name__)


def add_commands(sub) -> None:
    from ..models.convert import SOURCES
    from ..models.convert.lucidrains_vit import ACTS

    s = sub.add_parser("convert", help="convert a lucidrains / torchvision ViT state dict into an exact timm model")
    s.add_argument("src", help="state dict file: .pth / .pt (read with weights_only=True) or .safetensors")
    s.add_argument("--from", dest="source", default="auto", choices=SOURCES, help="source layout (auto detects)")
    s.add_argument("--heads", type=int, default=None, help="attention heads (not stored in the weights)")
    s.add_argument("--dim-head", type=int, default=None, help="lucidrains: width of one head (dim_head)")
    s.add_argument("--image-size", type=int, default=None, help="input side in pixels (checked against the weights)")
    s.add_argument("--patch-size", type=int, default=None, help="lucidrains: patch side in pixels")
    s.add_argument("--channels", type=int, default=None, help="lucidrains: input channels")
    s.add_argument("--act", default=None, choices=ACTS, help="lucidrains: MLP activation (default gelu)")
    s.add_argument("--pool", default=None, choices=("cls", "mean"), help="lucidrains: pooling (default from weights)")
    s.add_argument("-o", "--out", required=True, help="out.safetensors (weights) or a directory (vitkit artifact)")
    s.set_defaults(func=cmd_convert)


def cmd_convert(args) -> int:
    import yaml
    from safetensors.torch import save

    from .._io import atomic_write_bytes
    from ..errors import ConfigError
    from ..models.convert import convert_state
    from ..models.load import build_arch, load_state_dict_strict, read_state_dict
    from ..ui import console

    src = Path(args.src)
    hints = {
        "heads": args.heads,
        "dim_head": args.dim_head,
        "image_size": args.image_size,
        "patch_size": args.patch_size,
        "channels": args.channels,
        "act": args.act,
        "pool": args.pool,
    }
    hints = {k: v for k, v in hints.items() if v is not None}
    out = Path(args.out)
    if out.resolve() == src.resolve():
        raise ConfigError(f"-o {out} is the source file: choose another output path")
    state = read_state_dict(src)
    name, kwargs, timm_state = convert_state(state, args.source, **hints)
    model = build_arch(name, kwargs)  # proves the kwargs build and the weights fit before anything is written
    load_state_dict_strict(model, timm_state, source=f"converted {src}")
    arch = {"name": name, "kwargs": kwargs}
    if out.suffix == ".safetensors":
        tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
        atomic_write_bytes(out, save(tensors, metadata={"format": "pt", "vitkit_arch": json.dumps(arch)}))
        what = f"timm weights written to {out}; load with vitkit.load({str(out)!r}, arch=...) or in a recipe:"
        text = yaml.safe_dump({"model": str(out), "arch": arch}, sort_keys=False)
    elif out.suffix:
        raise ConfigError(f"-o {out}: write .safetensors weights or a directory (a vitkit artifact), not {out.suffix}")
    else:
        from ..artifact import save_artifact

        provenance = {"convert": {"src": str(src), "from": args.source, **hints}}
        save_artifact(model, provenance, None, out, title=f"vitkit convert: {src.name}")
        what = f"vitkit artifact written to {out}; use it as `model: {out}` in a recipe (no arch needed). Its arch:"
        text = yaml.safe_dump({"arch": arch}, sort_keys=False)
    con = console()
    con.print(what)
    con.print(text, markup=False, highlight=False)
    return 0
