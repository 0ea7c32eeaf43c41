"""Conversion parity, Hugging Face ``transformers`` / open_clip ⇄ timm → the "hf" section of BENCHMARKS.md.

Rows:

- **real ViT-Ti** (``--weights``, timm ``vit_tiny_patch16_224.augreg_in21k_ft_in1k``; 197 tokens, 1,000 classes):
  timm → ``transformers`` ``ViTForImageClassification`` (vitkit's ``to_hf``, the path ``vitkit export --format hf``
  takes) → ``save_pretrained`` → ``vitkit.load(folder)``: max |Δ logit| and top-1 agreement of each hop against the
  previous one, on ``--images`` real ImageNet images (``--data``, timm's eval transform). Both ends are timm, the
  middle one is transformers' own forward.
- **one tiny random-init model per supported type** (each built with ``transformers`` / open_clip here, saved with
  ``save_pretrained``, loaded with ``vitkit.load``): max |Δ| of logits / pooled features / image embeddings against
  the library's own forward, on the same real images resized to the model's input (random images without
  ``--data``), and whether ``to_hf`` gives back every tensor of the folder.

Usage: .venv/bin/python benchmarks/hf_parity.py [--weights PATH] [--data DIR] [--images N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import vitkit  # noqa: E402
from vitkit.bench import environment  # noqa: E402
from vitkit.bench.record import env_lines, write_section  # noqa: E402

SHARED = ROOT.parent / "shared" / "real"
WEIGHTS = SHARED / "vit_tiny_patch16_224.augreg_in21k_ft_in1k.safetensors"
DATA = SHARED / "imagenet-sample"

TINY_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def real_images(data: Path | None, n: int, side: int, mean, std) -> torch.Tensor:
    """``n`` real images (sorted, every k-th file) → ``[n, 3, side, side]``: short side to side/0.9, centre crop."""
    from PIL import Image
    from torchvision.transforms import v2 as T

    if data is None or not data.is_dir():
        return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(0))
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    files = files[:: max(1, len(files) // n)][:n]
    tf = T.Compose(
        [
            T.Resize(int(side / 0.9), interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(side),
            T.ToImage(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(mean, std),
        ]
    )
    return torch.stack([tf(Image.open(f).convert("RGB")) for f in files])


def _cmp(a: torch.Tensor, b: torch.Tensor) -> dict:
    agree = float((a.argmax(-1) == b.argmax(-1)).float().mean()) if a.shape[-1] > 1 else float("nan")
    return {"max_abs": float((a - b).abs().max()), "agree": agree, "scale": float(b.abs().max())}


def real_rows(args) -> list[list[str]]:
    from vitkit.models.hf.registry import converter_for_timm

    if not Path(args.weights).is_file():
        return [["real ViT-Ti", "–", f"weights not found at {args.weights} (pass --weights)", "", ""]]
    import transformers
    from safetensors.torch import save_file

    timm_model = vitkit.load(args.weights, arch="vit_tiny_patch16_224").eval()
    x = real_images(args.data, args.images, 224, (0.5,) * 3, (0.5,) * 3)
    rec = timm_model.vitkit_arch
    conv = converter_for_timm(rec["name"], rec["kwargs"])
    cfg, state = conv.to_hf(rec["name"], rec["kwargs"], timm_model.state_dict(), None)
    rows = []
    with torch.inference_mode(), tempfile.TemporaryDirectory() as tmp:
        written, saved = Path(tmp) / "written", Path(tmp) / "saved"
        written.mkdir()
        (written / "config.json").write_text(json.dumps(cfg))
        save_file({k: v.contiguous() for k, v in state.items()}, str(written / "model.safetensors"))
        hf = transformers.ViTForImageClassification.from_pretrained(written).eval()
        ref = timm_model(x)
        out_hf = hf(pixel_values=x).logits
        hf.save_pretrained(saved)
        back = vitkit.load(saved).eval()
        out_back = back(x)
    c1, c2 = _cmp(out_hf, ref), _cmp(out_back, out_hf)
    src = f"{len(x)} real ImageNet images" if args.data and Path(args.data).is_dir() else f"{len(x)} random images"
    rows.append(
        [
            "real ViT-Ti (`vit_tiny_patch16_224`, 1,000 classes)",
            "timm → transformers `ViTForImageClassification`",
            src,
            f"{c1['max_abs']:.2e} (logits up to {c1['scale']:.1f})",
            f"{100 * c1['agree']:.1f}",
        ]
    )
    rows.append(["", "transformers folder → `vitkit.load`", src, f"{c2['max_abs']:.2e}", f"{100 * c2['agree']:.1f}"])
    return rows


def _tiny_cases():
    """(row name, build() → (model, side), forward(model, x) → tensor)."""
    import transformers as T

    def logits(m, x):
        return m(pixel_values=x).logits

    def pooled(m, x):
        return m(pixel_values=x).pooler_output

    cases = [
        (
            "vit: ViTForImageClassification",
            lambda: T.ViTForImageClassification(T.ViTConfig(**TINY_VIT, image_size=32, patch_size=8, num_labels=10)),
            logits,
        ),
        (
            "deit: DeiTForImageClassificationWithTeacher",
            lambda: T.DeiTForImageClassificationWithTeacher(
                T.DeiTConfig(**TINY_VIT, image_size=32, patch_size=8, num_labels=10)
            ),
            logits,
        ),
        (
            "dinov2: Dinov2Model (CLS after the final norm)",
            lambda: T.Dinov2Model(T.Dinov2Config(**TINY_VIT, image_size=32, patch_size=8, mlp_ratio=2)),
            pooled,
        ),
        (
            "swin: SwinForImageClassification",
            lambda: T.SwinForImageClassification(
                T.SwinConfig(
                    image_size=32,
                    patch_size=2,
                    window_size=4,
                    embed_dim=16,
                    depths=[2, 2],
                    num_heads=[2, 4],
                    num_labels=10,
                )
            ),
            logits,
        ),
        (
            "clip_vision_model: CLIPVisionModelWithProjection",
            lambda: T.CLIPVisionModelWithProjection(
                T.CLIPVisionConfig(**TINY_VIT, image_size=32, patch_size=8, projection_dim=24)
            ),
            lambda m, x: m(pixel_values=x).image_embeds,
        ),
        (
            "siglip_vision_model: SiglipVisionModel (MAP head)",
            lambda: T.SiglipVisionModel(T.SiglipVisionConfig(**TINY_VIT, image_size=32, patch_size=8)),
            pooled,
        ),
    ]
    return cases


def tiny_rows(args) -> list[list[str]]:
    from safetensors.torch import load_file

    from vitkit.models.hf.registry import converter_for_timm

    rows = []
    for name, build, forward in _tiny_cases():
        torch.manual_seed(0)
        hf = build().eval()
        x = real_images(args.data, 16, 32, (0.5,) * 3, (0.5,) * 3)
        with torch.inference_mode(), tempfile.TemporaryDirectory() as tmp:
            hf.save_pretrained(tmp)
            model = vitkit.load(tmp).eval()
            c = _cmp(model(x), forward(hf, x))
            rec = model.vitkit_arch
            conv = converter_for_timm(rec["name"], rec["kwargs"])
            _, state = conv.to_hf(rec["name"], rec["kwargs"], model.state_dict(), rec["hf"]["config"])
            saved = load_file(str(Path(tmp) / "model.safetensors"))
            same = [k for k in saved if k in state and torch.equal(saved[k], state[k])]
        rows.append(
            [
                name,
                "transformers folder → `vitkit.load`",
                f"{len(x)} {'real' if args.data else 'random'} images, 32²",
                f"{c['max_abs']:.2e}",
                f"{len(same)}/{len(saved)} tensors back",
            ]
        )
    rows.append(open_clip_row(args))
    return rows


def open_clip_row(args) -> list[str]:
    import open_clip

    torch.manual_seed(0)
    clip = open_clip.model.CLIP(
        embed_dim=24,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=32),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=8, vocab_size=64, width=32, heads=2, layers=1),
    ).eval()
    x = real_images(args.data, 16, 32, (0.5,) * 3, (0.5,) * 3)
    with torch.inference_mode():
        model = vitkit.models.open_clip.from_open_clip(clip).eval()
        c = _cmp(model(x), clip.encode_image(x))
        cos = float(F.cosine_similarity(model(x), clip.encode_image(x)).min())
    return [
        "open_clip: CLIP image tower",
        "`from_open_clip` → timm",
        f"{len(x)} {'real' if args.data else 'random'} images, 32²",
        f"{c['max_abs']:.2e}",
        f"min cos {cos:.6f}",
    ]


def render(rows: list[list[str]], env: dict, args) -> str:
    head = [
        "## Conversion parity: Hugging Face / open_clip ⇄ timm (`benchmarks/hf_parity.py`)",
        "",
        "Each row loads a model one way and compares its outputs with the source library's own forward on the same",
        "images (real ImageNet images from the bundled sample, resized; random where absent). The real ViT-Ti row",
        "goes timm → transformers (the path `vitkit export --format hf` writes) → `vitkit.load` of the saved folder;",
        "the tiny rows are random-init models of every supported `model_type`, saved with `save_pretrained`.",
        "",
        env_lines(env),
        "",
        "| model | path | images | max abs diff | top-1 agreement % / state back |",
        "|---|---|---|---|---|",
    ]
    return "\n".join(head + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=str(WEIGHTS))
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = ap.parse_args(argv)
    args.data = Path(args.data) if args.data and Path(args.data).is_dir() else None
    try:
        import open_clip  # noqa: F401
        import transformers
    except ImportError:
        raise SystemExit("hf_parity needs the extras: pip install -e '.[hf,clip]'") from None
    transformers.utils.logging.disable_progress_bar()
    env = environment(probe=False)
    rows = real_rows(args) + tiny_rows(args)
    for r in rows:
        print(" | ".join(r), flush=True)
    write_section("hf", render(rows, env, args), args.out)


if __name__ == "__main__":
    main()
