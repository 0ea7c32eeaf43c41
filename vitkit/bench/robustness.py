"""Robustness of a (compressed) model next to its original: patch corruption and one-pixel shifts.

- **Patch perturbation** — Gu et al., *Are Vision Transformers Robust to Patch Perturbations?* (ECCV 2022),
  §3 "natural patch corruption": a fraction of the image's patches (on the model's own patch grid) is replaced
  by Gaussian noise of the image's statistics; we report top-1 on the corrupted images and the fraction of
  predictions that stay the same as on the clean image. The paper's adversarial patch attack needs gradients
  through every variant (not possible for ONNX Runtime or integer models), so only the natural corruption is
  measured here — a deliberate simplification.
- **Shift consistency** — Rojas-Gomez et al., *Reviving Shift Equivariance in Vision Transformers* (2023),
  following Zhang's "consistency" metric: the fraction of images whose top-1 prediction does not change when the
  input is circularly shifted by one pixel (a random direction per image, seeded).

Both use the same seeded corruptions for every variant, so the numbers are comparable within one report.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..data import iterate_batches


@dataclass(frozen=True)
class RobustnessSpec:
    """Which corruptions to measure. ``patch_fraction`` of the patches is replaced by noise (at least one)."""

    patch_fraction: float = 0.1
    shift: int = 1
    limit: int | None = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.patch_fraction <= 1:
            raise ValueError(f"patch_fraction must be in (0, 1], got {self.patch_fraction}")
        if self.shift < 1:
            raise ValueError(f"shift must be a positive number of pixels, got {self.shift}")


def corrupt_patches(x: torch.Tensor, patch: tuple[int, int], fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Replace ``fraction`` of the (patch_h × patch_w) cells of each image with N(mean, std) noise of that image."""
    b, c, h, w = x.shape
    ph, pw = patch
    gh, gw = h // ph, w // pw
    n_cells = gh * gw
    k = max(1, round(fraction * n_cells))
    scores = torch.rand(b, n_cells, generator=gen)
    chosen = scores.topk(k, dim=1).indices  # (B, k) cells to corrupt
    mask = torch.zeros(b, n_cells, dtype=torch.bool).scatter_(1, chosen, True)
    mask = mask.view(b, 1, gh, 1, gw, 1).expand(b, c, gh, ph, gw, pw).reshape(b, c, gh * ph, gw * pw)
    full = torch.zeros(b, c, h, w, dtype=torch.bool)
    full[:, :, : gh * ph, : gw * pw] = mask
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True)
    noise = mean + std * torch.randn(x.shape, generator=gen)
    return torch.where(full, noise, x)


def shift_pixels(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Circularly shift each image by ``shift`` pixels in one of four random directions."""
    dirs = torch.randint(0, 4, (x.shape[0],), generator=gen)
    offsets = {0: (shift, 0), 1: (-shift, 0), 2: (0, shift), 3: (0, -shift)}
    out = torch.empty_like(x)
    for d, (dy, dx) in offsets.items():
        sel = dirs == d
        if sel.any():
            out[sel] = torch.roll(x[sel], shifts=(dy, dx), dims=(2, 3))
    return out


def patch_size_of(model: nn.Module, default: tuple[int, int] = (16, 16)) -> tuple[int, int]:
    from ..adapters.timm_vit import describe
    from ..errors import UnsupportedModelError

    try:
        return tuple(describe(model).patch_size)
    except (UnsupportedModelError, AttributeError, TypeError):
        return default


@torch.inference_mode()
def robustness(models: list[nn.Module], dataset, spec: RobustnessSpec = RobustnessSpec(), *, patch=None) -> list[dict]:
    """For each model: clean top-1, corrupted top-1, corruption consistency and shift consistency (fractions).

    Every model sees exactly the same corrupted and shifted images (one generator per corruption, re-seeded)."""
    patch = tuple(patch or patch_size_of(models[0]))
    clean, corrupt, shifted, labels = [[] for _ in models], [[] for _ in models], [[] for _ in models], []
    gen_p = torch.Generator().manual_seed(spec.seed)
    gen_s = torch.Generator().manual_seed(spec.seed + 1)
    for x, y in iterate_batches(dataset, 128, limit=spec.limit):
        xp = corrupt_patches(x, patch, spec.patch_fraction, gen_p)
        xs = shift_pixels(x, spec.shift, gen_s)
        labels.append(torch.as_tensor(y))
        for i, m in enumerate(models):
            m.eval()
            clean[i].append(m(x).argmax(-1))
            corrupt[i].append(m(xp).argmax(-1))
            shifted[i].append(m(xs).argmax(-1))
    y = torch.cat(labels)
    out = []
    for i in range(len(models)):
        c, p, s = torch.cat(clean[i]), torch.cat(corrupt[i]), torch.cat(shifted[i])
        out.append(
            {
                "patch_corrupt_top1": float((p == y).float().mean()),
                "patch_consistency": float((p == c).float().mean()),
                "shift_consistency": float((s == c).float().mean()),
            }
        )
    return out
