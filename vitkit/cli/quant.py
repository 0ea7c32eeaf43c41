"""``vitkit export-qdq ARTIFACT -o model.qdq.onnx`` and ``vitkit int-eval ARTIFACT --data mnist5k``.

``export-qdq`` writes a W8A8 ``ptq`` artifact as ONNX QDQ with vitkit's calibrated scales (atomic write) and checks
it in ONNX Runtime; ``int-eval`` runs the artifact's integer-only twin (:func:`vitkit.quant.to_integer`) beside the
fake-quant model on a test split and prints top-1 and their agreement. Bad input: one ``error: ...`` line, exit 2.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import ConfigError

_log = logging.getLogger(__name__)


def add_commands(sub) -> None:
    s = sub.add_parser("export-qdq", help="export a W8A8 ptq artifact to ONNX QDQ with vitkit's calibrated scales")
    s.add_argument("artifact", help="artifact directory of a ptq model (method repq/dopq/minmax/percentile)")
    s.add_argument("-o", "--out", required=True, help="output .onnx file")
    s.set_defaults(func=cmd_export_qdq)
    s = sub.add_parser("int-eval", help="integer-only (I-ViT) inference of a ptq artifact vs its fake-quant model")
    s.add_argument("artifact", help="artifact directory of a W8A8 ptq model")
    s.add_argument("--data", default="mnist5k", help="dataset: mnist5k | digits | imagefolder:/path")
    s.add_argument("--split", default="test")
    s.add_argument("-n", "--images", type=int, default=500, help="number of images (default 500)")
    s.add_argument("--batch", type=int, default=100)
    s.set_defaults(func=cmd_int_eval)


def _load_ptq(path: str):
    from .. import load
    from ..artifact import is_artifact
    from ..quant.modules import quantizers

    if not Path(path).is_dir() or not is_artifact(path):
        raise ConfigError(f"{path} is not a vitkit artifact directory: pass the output of a ptq recipe")
    model = load(path)
    if not quantizers(model):
        raise ConfigError(
            f"{path} holds no ptq step: quantize it first (recipe step {{ptq: {{w_bits: 8, a_bits: 8}}}})"
        )
    return model


def cmd_export_qdq(args) -> int:
    import torch

    from ..adapters.timm_vit import input_size
    from ..deploy import OrtModule, export_qdq
    from ..ui import console

    model = _load_ptq(args.artifact)
    out = Path(args.out)
    if out.suffix != ".onnx":
        raise ConfigError(f"output {out} should end in .onnx")
    path = export_qdq(model, out)
    x = torch.randn(2, *input_size(model))
    with torch.no_grad():
        diff = float((OrtModule(path)(x) - model(x)).abs().max())
    console().print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB); max |Δ| vs fake-quant on 2 images {diff:.4g}")
    return 0


def cmd_int_eval(args) -> int:
    import torch

    from ..data import load_dataset
    from ..quant.integer import to_integer
    from ..ui import console, progress

    if args.images < 1 or args.batch < 1:
        raise ConfigError("--images and --batch must be positive")
    model = _load_ptq(args.artifact)
    data = load_dataset(args.data, split=args.split, model=model)
    n = min(args.images, len(data))
    iv = to_integer(model)
    hits_fq = hits_int = agree = 0
    with progress() as prog:
        task = prog.add_task("integer vs fake-quant", total=n, info="")
        for start in range(0, n, args.batch):
            items = [data[i] for i in range(start, min(n, start + args.batch))]
            x = torch.stack([it[0] for it in items])
            y = torch.tensor([int(it[1]) for it in items])
            with torch.no_grad():
                fq = model(x).argmax(1)
            it = iv(x).argmax(1)
            hits_fq += int((fq == y).sum())
            hits_int += int((it == y).sum())
            agree += int((fq == it).sum())
            prog.update(task, completed=start + len(items), info=f"agreement {100 * agree / (start + len(items)):.1f}%")
    console().print(
        f"{n} images: fake-quant top-1 {100 * hits_fq / n:.2f}%, integer-only top-1 {100 * hits_int / n:.2f}%, "
        f"top-1 agreement {100 * agree / n:.2f}%"
    )
    return 0
