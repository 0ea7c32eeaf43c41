"""Integer-only ViT operators after I-ViT (Li & Gu, ICCV 2023, §3.2–3.4) and I-Segmenter (Sassoon et al., 2025):
dyadic requantization, Shiftmax, ShiftGELU / λ-ShiftGELU, integer sqrt and I-LayerNorm, on int64 tensors holding
integer codes (no float arithmetic inside; real-valued constants are turned into integers once, at conversion).

Each op has a float *twin* (``*_reference``) that evaluates the same approximation with real numbers — the
function I-ViT trains with (QAT) — and the tests check the integer version within 1 LSB of it. The
approximations themselves differ from exact softmax/GELU by a few percent: I-ViT recovers that with 30–90
epochs of QAT, which vitkit does not do (PTQ only; :func:`vitkit.quant.to_integer` measures what it costs).

Precision. I-ViT computes ``x0 = ⌊−1/s⌋`` and the shifts ``t>>1``, ``t>>4`` directly on the input codes; with a
coarse input scale those floors cost up to 2 output LSB (measured on the previous version). Here the codes are
first shifted left by :func:`precision_shift` bits (scale ``s/2^k`` with ``1/(s/2^k) ≥ 2^14``; still integer
only), and the normalisation is one exact floor division per element instead of I-ViT's
``⌊(2^31−1)/Σ⌋`` factor. The integer result then differs from its twin only by the floors at the last step:
≤ 1 LSB, measured in ``tests/quant/test_int_ops.py``.
"""

from __future__ import annotations

import math

import torch

INT_MAX = 2**31 - 1
LOG2E_Q = 1.4375  # I-ViT: log2(e) ≈ 1 + 1/2 − 1/16 (shift-add)


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


def make_requant(
    mult: torch.Tensor, add: torch.Tensor | float = 0.0, *, q_bits: int = 32, max_bits: int = 31
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Integer constants ``(m [C], b [C], c)`` for ``y = round(q·mult + add)`` per channel (last dim), one shared
    shift ``c``: ``y = (q·m + b + 2^(c−1)) >> c`` with ``m = round(mult·2^c)``, ``b = round(add·2^c)``.
    ``q_bits`` bounds ``|q| < 2^q_bits`` so that every product fits in int64. Computed once, at conversion."""
    mult = torch.as_tensor(mult, dtype=torch.float64).reshape(-1)
    add = torch.as_tensor(add, dtype=torch.float64).reshape(-1)
    m_bits = min(max_bits, 61 - q_bits)
    top = float(mult.abs().max().clamp_min(1e-300))
    top_add = float(add.abs().max())
    c = 1
    while c < 62 and top * 2 ** (c + 1) < 2**m_bits and top_add * 2 ** (c + 1) < 2**60:
        c += 1
    return torch.round(mult * 2**c).long(), torch.round(add * 2**c).long(), c


def apply_requant(q: torch.Tensor, m: torch.Tensor, b: torch.Tensor, c: int) -> torch.Tensor:
    """``(q·m + b + 2^(c−1)) >> c`` (:func:`make_requant`), broadcast over the last dim."""
    return (q.to(torch.int64) * m + b + (1 << (c - 1))) >> c


def precision_shift(scale: float, target: int = 2**14) -> int:
    """Smallest ``k`` with ``1/(scale/2^k) ≥ target``: left-shifting codes by ``k`` makes the floors in the
    shift-based exponent negligible."""
    k = 0
    while 2**k / scale < target and k < 40:
        k += 1
    return k


def _shift_exp(t: torch.Tensor, x0: int, n: int) -> torch.Tensor:
    """Integer ``e^(t·s)·2^n/s`` for ``t ≤ 0`` (I-ViT eq. 6–8): ``t·log2e ≈ t + t>>1 − t>>4``, split into
    ``−q + r/x0`` and ``2^(r·s) ≈ 1 + r·s/2``; ``x0 = ⌊−1/s⌋``."""
    t = t + (t >> 1) - (t >> 4)
    q = torch.div(t, x0, rounding_mode="floor")  # number of whole halvings, ≥ 0
    r = t - x0 * q  # in (x0, 0]
    mant = (r >> 1) - x0  # (1 + r·s/2)/s, > 0
    left = (n - q).clamp(min=0, max=62)
    right = (q - n).clamp(min=0, max=62)
    return torch.where(q <= n, mant << left, mant >> right).clamp(min=0)


def _exp_reference(y: torch.Tensor) -> torch.Tensor:
    """Float twin of :func:`_shift_exp` (without its ``2^n/s`` factor): ``2^(−q)·(1 + f/2)`` with
    ``y·1.4375 = −q + f``, ``f ∈ (−1, 0]``."""
    y = y * LOG2E_Q
    q = torch.floor(-y)
    return torch.pow(2.0, -q) * (1 + (y + q) / 2)


def shiftmax(x: torch.Tensor, scale: float, *, out_bits: int = 8, n: int = 24) -> torch.Tensor:
    """I-ViT Shiftmax over the last dim: int codes ``x`` (real value ``x·scale``) → codes of softmax with scale
    ``1/2^(out_bits−1)`` (values 0 … 2^(out_bits−1)). What changed from I-ViT: precision shift and an exact
    per-element floor division (module docstring)."""
    k = precision_shift(scale)
    t = (x.to(torch.int64) - x.to(torch.int64).amax(dim=-1, keepdim=True)) << k
    x0 = math.floor(-(2**k) / scale)
    e = _shift_exp(t, x0, n)  # [..., N], ≤ 2^n·|x0|
    return torch.div(e << (out_bits - 1), e.sum(-1, keepdim=True), rounding_mode="floor")


def shiftmax_reference(x: torch.Tensor, scale: float, *, out_bits: int = 8) -> torch.Tensor:
    """Float twin of :func:`shiftmax` (same approximation in real numbers), as codes of scale ``1/2^(out_bits−1)``."""
    t = (x - x.amax(dim=-1, keepdim=True)).double() * scale  # ≤ 0, real units
    e = _exp_reference(t)
    return torch.floor(e / e.sum(-1, keepdim=True) * 2 ** (out_bits - 1))


def _lam_q(lam: float) -> int:
    """λ as a multiple of 1/16 (a shift-add constant; I-ViT: 1.702 ≈ 1 + 1/2 + 1/8 + 1/16 = 27/16)."""
    if not 0 < lam < 16:
        raise ValueError(f"λ must be in (0, 16), got {lam}")
    return int(round(lam * 16))


def shift_gelu(
    x: torch.Tensor, scale: float, *, lam: float = 1.702, sig_bits: int = 15, n: int = 24
) -> tuple[torch.Tensor, float]:
    """ShiftGELU (I-ViT §3.3, eq. 9–10): ``GELU(x) ≈ x·σ(λx)`` with ``λ = 1.702`` and the sigmoid written as
    ``e^(p−m) / (e^(p−m) + e^(−m))``, ``p = λx``, ``m = max(p, 0)`` (both exponents ≤ 0, via the shift-based
    exponent). Returns ``(codes, out_scale)``: GELU ≈ ``codes·out_scale`` with ``out_scale = scale·2^(−sig_bits)``.

    What changed from I-ViT: ``m`` is taken per element rather than the row maximum (same value of σ, more
    precision for negative inputs), plus the precision shift and exact division of :func:`shiftmax`.
    """
    x = x.to(torch.int64)
    k = precision_shift(scale)
    p = (x * _lam_q(lam)) << k >> 4  # λx at scale s/2^k
    m = p.clamp(min=0)
    x0 = math.floor(-(2**k) / scale)
    e1, e2 = _shift_exp(p - m, x0, n), _shift_exp(-m, x0, n)
    sig = torch.div(e1 << sig_bits, (e1 + e2).clamp(min=1), rounding_mode="floor")  # σ(λx)·2^sig_bits
    return x * sig, scale / 2**sig_bits


def lambda_shift_gelu(x: torch.Tensor, scale: float, *, lam: float, **kw) -> tuple[torch.Tensor, float]:
    """λ-ShiftGELU (I-Segmenter, 2025): ShiftGELU with the sigmoid slope ``λ`` as a tunable constant.

    Only I-Segmenter's abstract was available here: it introduces λ-ShiftGELU to temper long-tailed GELU
    inputs under uniform quantization but its exact formula is not in our sources. Our reading — documented,
    not verified against the paper — is the λ-parameterized form of :func:`shift_gelu`, ``x·σ(λx)`` with λ a
    1/16-step dyadic constant (λ = 1.702 gives I-ViT's ShiftGELU; larger λ moves it towards ReLU and shortens
    the negative tail)."""
    return shift_gelu(x, scale, lam=lam, **kw)


def shift_gelu_reference(x: torch.Tensor, scale: float, *, lam: float = 1.702) -> torch.Tensor:
    """Float twin of :func:`shift_gelu` (same approximation in real numbers), real-valued output."""
    xr = x.double() * scale
    p = xr * (_lam_q(lam) / 16)
    m = p.clamp(min=0)
    e1, e2 = _exp_reference(p - m), _exp_reference(-m)
    return xr * e1 / (e1 + e2)


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


def log2_thresholds(delta: float, bits: int, in_scale: float, *, sqrt2: bool = True) -> torch.Tensor:
    """Integer thresholds ``[2^b]`` turning uniform codes ``P`` (real ``P·in_scale``) into the log2 / log√2 codes
    ``clamp(round(−k·log2(P·in_scale/δ)), 0, 2^b−1)`` of RepQ-ViT eq. 11 by comparisons only (the integer form of
    :func:`vitkit.ops.quant.log2_codes`). Threshold ``j`` is ``⌊δ·2^(−(j+½)/k)/in_scale⌋``; the last one marks
    underflow (``round(…) ≥ 2^b``, dequantized to 0)."""
    k = 2.0 if sqrt2 else 1.0
    j = torch.arange(2**bits, dtype=torch.float64)
    return torch.floor(delta * torch.pow(2.0, -(j + 0.5) / k) / in_scale).long()


def log2_codes_int(p: torch.Tensor, thresholds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, underflow mask)`` of the uniform codes ``p`` (see :func:`log2_thresholds`): code = number of the
    first ``2^b − 1`` thresholds that are ``≥ p``."""
    p = p.to(torch.int64)
    asc = thresholds[:-1].flip(0).contiguous()  # ascending
    codes = asc.numel() - torch.searchsorted(asc, p.contiguous(), right=False)
    return codes, p <= thresholds[-1]
