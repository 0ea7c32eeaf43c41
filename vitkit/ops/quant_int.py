"""Integer-only ViT operators after I-ViT (Li & Gu, ICCV 2023, §3.2–3.4): dyadic requantization, Shiftmax and
I-LayerNorm, on int64 tensors holding integer codes (no float arithmetic inside).

Each op has a float *twin* (``*_reference``) that evaluates the same approximation with real numbers — the
function I-ViT trains with (QAT) — so tests can check the integer version within 1 LSB of it. The
approximations themselves differ from exact softmax/GELU by a few percent: I-ViT recovers that with 30–90
epochs of QAT, which vitkit does not do (PTQ only). Not implemented yet: ShiftGELU (a first version lost
too much precision in the integer division — removed), I-Segmenter's λ-ShiftGELU, and ``to_integer(model)``.
Measured: Shiftmax is within 2 LSB of its float twin (floors in ``t>>1``, ``r>>1`` and ``x0 = floor(−1/s)``),
not 1.
"""

from __future__ import annotations

import math

import torch

INT_MAX = 2**31 - 1


def dyadic(scale: float, bits: int = 31) -> tuple[int, int]:
    """``(m, c)`` with ``m / 2^c ≈ scale`` and ``m < 2^bits`` (I-ViT §3.1, dyadic arithmetic)."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    c = 0
    while round(scale * 2 ** (c + 1)) < 2**bits and c < 62:
        c += 1
    return int(round(scale * 2**c)), c


def requantize(q: torch.Tensor, m: int, c: int) -> torch.Tensor:
    """``round(q·m / 2^c)`` with integer ops (add half, arithmetic shift)."""
    q = q.to(torch.int64)
    return (q * m + (1 << (c - 1) if c > 0 else 0)) >> c


def _shift_exp(t: torch.Tensor, x0: int, n: int) -> torch.Tensor:
    """Integer ``e^(t·s)·2^n/s`` for ``t ≤ 0`` (I-ViT eq. 6–8): ``t·log2e ≈ t + t>>1 − t>>4``, split into
    ``−q + r/x0`` and ``2^(r·s) ≈ 1 + r·s/2``; ``x0 = floor(−1/s)``."""
    t = t + (t >> 1) - (t >> 4)
    q = torch.div(t, x0, rounding_mode="floor")  # number of whole halvings, ≥ 0
    r = t - x0 * q  # in (x0, 0]
    mant = (r >> 1) - x0  # (1 + r·s/2)/s, > 0
    left = (n - q).clamp(min=0, max=62)
    right = (q - n).clamp(min=0, max=62)
    return torch.where(q <= n, mant << left, mant >> right).clamp(min=0)


def shiftmax(x: torch.Tensor, scale: float, *, out_bits: int = 8, n: int = 15) -> torch.Tensor:
    """I-ViT Shiftmax over the last dim: int codes ``x`` (real value ``x·scale``) → codes of softmax with scale
    ``1/2^(out_bits−1)``."""
    x = x.to(torch.int64)
    t = x - x.amax(dim=-1, keepdim=True)
    x0 = math.floor(-1.0 / scale)
    e = _shift_exp(t, x0, n)
    factor = torch.div(torch.full_like(e[..., :1], INT_MAX), e.sum(-1, keepdim=True), rounding_mode="floor")
    return (e * factor) >> (31 - out_bits + 1)


def shiftmax_reference(x: torch.Tensor, scale: float, *, out_bits: int = 8) -> torch.Tensor:
    """Float twin of :func:`shiftmax` (same approximation in real numbers), as codes of scale ``1/2^(out_bits−1)``."""
    t = (x - x.amax(dim=-1, keepdim=True)).double() * scale  # ≤ 0, real units
    y = t * 1.4375  # log2e ≈ 1 + 1/2 − 1/16
    q = torch.floor(-y)
    f = y + q  # in (−1, 0]
    e = torch.pow(2.0, -q) * (1 + f / 2)
    return torch.floor(e / e.sum(-1, keepdim=True) * 2 ** (out_bits - 1))


def isqrt(v: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """Integer square root by Newton iteration ``k ← floor((k + floor(v/k))/2)`` from ``k = 2^16`` (I-ViT §3.4)."""
    v = v.to(torch.int64)
    k = torch.full_like(v, 2**16)
    for _ in range(steps):
        k = (k + torch.div(v, k.clamp(min=1), rounding_mode="floor")) >> 1
    k = torch.where(k * k > v, k - 1, k)  # Newton may end one above floor(sqrt(v))
    return k.clamp(min=0)


def i_layernorm(x: torch.Tensor, *, steps: int = 20) -> tuple[torch.Tensor, float]:
    """I-LayerNorm without affine over the last dim: int codes → codes of ``(x − μ)/σ`` with scale ``√C / 2^30``
    (apply γ, β by dyadic requantization). Integer mean, variance as ``Σ(x − μ)²``, integer sqrt."""
    x = x.to(torch.int64)
    c = x.shape[-1]
    mean = torch.div(x.sum(-1, keepdim=True), c, rounding_mode="floor")
    y = x - mean
    var = (y * y).sum(-1, keepdim=True)
    std = isqrt(var, steps).clamp(min=1)
    factor = torch.div(torch.full_like(std, INT_MAX), std, rounding_mode="floor")
    return (y * factor) >> 1, math.sqrt(c) / 2**30
