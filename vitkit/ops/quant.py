"""Quantizer math for post-training quantization of ViTs (pure tensor functions, no nn.Module).

* Uniform quantizers, symmetric or asymmetric, per-tensor or per-channel, 2–8 bits:
  ``q = clamp(round(x / s) + z, qmin, qmax)``, ``x̂ = (q − z)·s`` (Jacob et al., CVPR 2018, eq. 1).
* Scale search: min-max, percentile clipping, RepQ-ViT's quantile search (clipping quantiles
  {0.999, 0.9999, 0.99999}, lowest L2 error wins — Li et al., ICCV 2023, §4 / public code) and an MSE
  search over a grid of clipping ratios (PTQ4ViT-style, Yuan et al., ECCV 2022, §4.1, with MSE in place of
  its Hessian-guided metric).
* log2 (FQ-ViT, Lin et al., IJCAI 2022, eq. 11) and log√2 (RepQ-ViT, eq. 11–12) post-softmax quantizers.
* Twin-uniform quantizers for post-softmax and post-GELU values (PTQ4ViT §4.2, eq. 5–6).
* :func:`sqnr_db`, the signal-to-quantization-noise ratio used by the tests.
* Eval-time fast paths (:func:`fake_quant_shifted`, :func:`log2_fake_quant_levels`, ``twin_uniform_*_fast``):
  the same values as the reference functions (which stay the readable definition, and what ONNX export
  traces) in fewer passes over the tensor.

Every uniform range is widened to include 0 so that zero is exactly representable (what int8 kernels
need); RepQ-ViT's code does not do this — a deliberate difference that only matters for tensors whose range
excludes 0.
"""

from __future__ import annotations

import math

import torch

#: RepQ-ViT's clipping quantiles for the L2 scale search.
REPQ_QUANTILES = (0.999, 0.9999, 0.99999)


def check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in 2..8, got {bits!r}")
    return bits


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer code range: symmetric ``[−(2^(b−1)−1), 2^(b−1)−1]`` (restricted, zero point 0), asymmetric
    ``[0, 2^b − 1]``."""
    check_bits(bits)
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _reduce_dims(x: torch.Tensor, axis: int | None) -> list[int]:
    if axis is None:
        return list(range(x.dim()))
    axis = axis % x.dim()
    return [d for d in range(x.dim()) if d != axis]


def _bcast(t: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Reshape a per-channel vector ``[C]`` (or a scalar/[1]) so that it broadcasts against ``x`` along ``axis``."""
    if axis is None or t.numel() == 1:
        return t.reshape([1] * x.dim()) if x.dim() else t.reshape(())
    shape = [1] * x.dim()
    shape[axis % x.dim()] = -1
    return t.reshape(shape)  # [1,..,C,..,1]


def qparams_from_range(
    lo: torch.Tensor, hi: torch.Tensor, bits: int, *, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point mapping ``[lo, hi]`` (widened to include 0) onto the code range."""
    qmin, qmax = qrange(bits, symmetric)
    lo = torch.minimum(lo, torch.zeros_like(lo))
    hi = torch.maximum(hi, torch.zeros_like(hi))
    if symmetric:
        scale = torch.maximum(hi, -lo) / qmax
        zero = torch.zeros_like(scale)
    else:
        scale = (hi - lo) / (qmax - qmin)
        zero = torch.round(-lo / scale.clamp_min(1e-12))
    scale = scale.clamp_min(1e-8)
    return scale, zero.clamp(qmin, qmax) if not symmetric else zero


def quantize(
    x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, *, symmetric: bool, axis: int | None = None
) -> torch.Tensor:
    """Integer codes (as float tensor holding integers) ``clamp(round(x/s) + z, qmin, qmax)``."""
    qmin, qmax = qrange(bits, symmetric)
    s, z = _bcast(scale, x, axis), _bcast(zero, x, axis)
    return torch.clamp(torch.round(x / s) + z, qmin, qmax)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, *, axis: int | None = None) -> torch.Tensor:
    return (q - _bcast(zero, q, axis)) * _bcast(scale, q, axis)


def fake_quant(
    x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, *, symmetric: bool, axis: int | None = None
) -> torch.Tensor:
    """Quantize-dequantize: the value an integer kernel would see, in float."""
    return dequantize(quantize(x, scale, zero, bits, symmetric=symmetric, axis=axis), scale, zero, axis=axis)


def fake_quant_ste(
    x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, *, symmetric: bool, axis: int | None = None
) -> torch.Tensor:
    """:func:`fake_quant` with a straight-through round (LSQ, Esser et al., ICLR 2020): gradients reach ``x``
    and ``scale`` (used by block reconstruction)."""
    qmin, qmax = qrange(bits, symmetric)
    s, z = _bcast(scale.clamp_min(1e-8), x, axis), _bcast(zero, x, axis)
    v = x / s
    q = torch.clamp(v + (torch.round(v) - v).detach() + z, qmin, qmax)
    return (q - z) * s


def _channels_last_2d(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``x`` as ``[C, M]`` with the channel axis first (per-tensor: ``[1, numel]``)."""
    if axis is None:
        return x.reshape(1, -1)  # [1, numel]
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)  # [C, M]


def _quantile_rows(x2d: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row quantile of ``[C, M]`` by ``kthvalue`` (``torch.quantile`` refuses > 16M elements)."""
    m = x2d.shape[1]
    pos = q * (m - 1)  # linear interpolation between order statistics, as torch.quantile
    lo = min(m - 1, int(math.floor(pos)))
    v_lo = x2d.kthvalue(lo + 1, dim=1).values
    if lo + 1 >= m or pos == lo:
        return v_lo
    v_hi = x2d.kthvalue(lo + 2, dim=1).values
    return v_lo + (pos - lo) * (v_hi - v_lo)


def _row_error(x2d: torch.Tensor, xq2d: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    return (x2d - xq2d).abs().pow(p).mean(dim=1)


#: the scale searches :func:`search_uniform` offers
SEARCH_METHODS = ("minmax", "percentile", "quantile", "mse")


def search_uniform(
    x: torch.Tensor,
    bits: int,
    *,
    symmetric: bool = False,
    axis: int | None = None,
    method: str = "minmax",
    percentile: float = 99.99,
    quantiles: tuple[float, ...] = REPQ_QUANTILES,
    grid: int = 20,
    min_ratio: float = 0.3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale/zero point (per-tensor ``[1]`` or per-channel ``[C]`` along ``axis``) for ``x``.

    ``method``: ``"minmax"``; ``"percentile"`` (clip at the ``percentile`` / ``100 − percentile`` quantiles);
    ``"quantile"`` (RepQ-ViT: each of ``quantiles`` as upper clip and ``1 − q`` as lower clip, lowest L2
    quantization error wins, per channel when ``axis`` is set); ``"mse"`` (clip ``[ratio·min, ratio·max]``
    for ``grid`` ratios in ``[min_ratio, 1]``, lowest MSE wins).
    """
    check_bits(bits)
    x2d = _channels_last_2d(x.detach().float(), axis)  # [C, M]
    if method == "minmax":
        lo, hi = x2d.amin(dim=1), x2d.amax(dim=1)
        return qparams_from_range(lo, hi, bits, symmetric=symmetric)
    if method == "percentile":
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        p = percentile / 100.0
        lo, hi = _quantile_rows(x2d, 1.0 - p), _quantile_rows(x2d, p)
        return qparams_from_range(lo, hi, bits, symmetric=symmetric)
    if method == "quantile":
        cands = [(_quantile_rows(x2d, 1.0 - q), _quantile_rows(x2d, q)) for q in quantiles]
    elif method == "mse":
        lo0, hi0 = x2d.amin(dim=1), x2d.amax(dim=1)
        ratios = torch.linspace(min_ratio, 1.0, grid).tolist()
        cands = [(lo0 * r, hi0 * r) for r in ratios]
    else:
        raise ValueError(f"unknown scale search {method!r}; valid: minmax, percentile, quantile, mse")
    best_s = best_z = best_err = None
    for lo, hi in cands:
        s, z = qparams_from_range(lo, hi, bits, symmetric=symmetric)
        err = _row_error(x2d, fake_quant(x2d, s, z, bits, symmetric=symmetric, axis=0))
        if best_err is None:
            best_s, best_z, best_err = s, z, err
        else:
            better = err < best_err
            best_s, best_z = torch.where(better, s, best_s), torch.where(better, z, best_z)
            best_err = torch.minimum(err, best_err)
    return best_s, best_z


# -- log quantizers (post-softmax, values in [0, 1]) ----------------------------------------------------
def log2_codes(x: torch.Tensor, delta: torch.Tensor, bits: int, *, sqrt2: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``q = clamp(round(−k·log2(x/δ)), 0, 2^b − 1)`` with k = 1 (log2) or 2 (log√2) and the mask of
    underflowing values (``round(...) ≥ 2^b``, dequantized to 0)."""
    check_bits(bits)
    k = 2.0 if sqrt2 else 1.0
    raw = torch.round(-k * torch.log2(x.clamp_min(0) / delta))  # +inf where x == 0
    under = raw >= 2**bits
    return torch.clamp(raw, 0, 2**bits - 1), under


def log2_dequant(q: torch.Tensor, under: torch.Tensor, delta: torch.Tensor, *, sqrt2: bool) -> torch.Tensor:
    """log2: ``δ·2^(−q)``; log√2 (RepQ-ViT eq. 12): ``δ·2^(−⌈q/2⌉)·(√2 if q odd else 1)``; underflow → 0."""
    if sqrt2:
        odd = torch.remainder(q, 2.0)
        val = delta * torch.pow(2.0, -torch.ceil(q / 2)) * (1.0 + odd * (math.sqrt(2.0) - 1.0))
    else:
        val = delta * torch.pow(2.0, -q)
    return torch.where(under, torch.zeros_like(val), val)


def log2_fake_quant(x: torch.Tensor, delta: torch.Tensor, bits: int, *, sqrt2: bool = True) -> torch.Tensor:
    q, under = log2_codes(x, delta, bits, sqrt2=sqrt2)
    return log2_dequant(q, under, delta, sqrt2=sqrt2)


def search_log2(
    x: torch.Tensor, bits: int, *, sqrt2: bool = True, quantiles: tuple[float, ...] = REPQ_QUANTILES + (1.0,)
) -> torch.Tensor:
    """δ for the log quantizer: RepQ-ViT's quantile candidates of ``x`` (plus the max), lowest L2 error wins."""
    flat = x.detach().float().reshape(1, -1)  # [1, numel]
    best, best_err = None, None
    for q in quantiles:
        delta = _quantile_rows(flat, q).clamp_min(1e-8)
        err = (flat - log2_fake_quant(flat, delta, bits, sqrt2=sqrt2)).pow(2).mean()
        if best_err is None or err < best_err:
            best, best_err = delta, err
    return best.reshape(1)


# -- twin uniform (PTQ4ViT) -------------------------------------------------------------------------------
def twin_uniform_softmax(x: torch.Tensor, delta1: torch.Tensor, bits: int) -> torch.Tensor:
    """PTQ4ViT twin uniform for post-softmax values (eq. 5): two (b−1)-bit ranges; R2 covers [0, 1] with
    ``Δ2 = 1/(2^(b−1) − 1)``, R1 = [0, (2^(b−1) − 1)·Δ1) with the searched fine ``Δ1``; a value uses R1 when it
    fits there, else R2."""
    check_bits(bits)
    top = 2 ** (bits - 1) - 1
    d2 = 1.0 / top
    in_r1 = x < top * delta1
    q1 = torch.clamp(torch.round(x / delta1), 0, top) * delta1
    q2 = torch.clamp(torch.round(x / d2), 0, top) * d2
    return torch.where(in_r1, q1, q2)


def search_twin_softmax(x: torch.Tensor, bits: int, *, splits: int = 20) -> torch.Tensor:
    """PTQ4ViT's ``Δ1 = 2^(−i)·Δ2`` candidates, i = 0..splits−1, lowest MSE (instead of its Hessian metric)."""
    top = 2 ** (bits - 1) - 1
    best, best_err = None, None
    for i in range(splits):
        d1 = torch.tensor([2.0**-i / top])
        err = (x - twin_uniform_softmax(x, d1, bits)).pow(2).mean()
        if best_err is None or err < best_err:
            best, best_err = d1, err
    return best


#: GELU's minimum is ≈ −0.16997 (PTQ4ViT fixes the negative range with it).
GELU_MIN = 0.16997


def twin_uniform_gelu(x: torch.Tensor, delta_pos: torch.Tensor, bits: int) -> torch.Tensor:
    """PTQ4ViT twin uniform for post-GELU values (eq. 6): negatives on a fixed (b−1)-bit grid
    ``Δ− = 0.16997 / 2^(b−1)``, positives on a (b−1)-bit grid with the searched ``Δ+``."""
    check_bits(bits)
    top = 2 ** (bits - 1) - 1
    d_neg = GELU_MIN / 2 ** (bits - 1)
    neg = torch.clamp(torch.round(x / d_neg), -(2 ** (bits - 1)), 0) * d_neg  # 2^(b-1) negative codes
    pos = torch.clamp(torch.round(x / delta_pos), 0, top) * delta_pos
    return torch.where(x < 0, neg, pos)


def search_twin_gelu(x: torch.Tensor, bits: int, *, grid: int = 40) -> torch.Tensor:
    """``Δ+ ∈ [0.05, 1.0]·max/(2^(b−1) − 1)`` on a grid, lowest MSE."""
    top = 2 ** (bits - 1) - 1
    hi = x.detach().float().amax().clamp_min(1e-6)
    best, best_err = None, None
    for r in torch.linspace(0.05, 1.0, grid).tolist():
        d = (hi * r / top).reshape(1)
        err = (x - twin_uniform_gelu(x, d, bits)).pow(2).mean()
        if best_err is None or err < best_err:
            best, best_err = d, err
    return best


# -- eval-time fast paths ----------------------------------------------------------------------------------
# Each gives the same values as the reference function it names (checked with torch.equal in
# tests/quant/test_fast_quant.py) in fewer passes over the tensor: every element goes through the same float
# operations in the same order, only the exact integer shifts and the final selection are rearranged. They work
# in place on their own intermediate, so the input must not need gradients (callers fall back to the reference
# functions when it does). On a shared 2-core CPU each pass over an activation costs a thread wake-up as well as
# its memory traffic, so the pass count is what these save.
def fake_quant_shifted(x: torch.Tensor, scale: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """:func:`fake_quant` for a per-tensor quantizer with an *integer* zero point ``z``, as
    ``clamp(round(x/s), qmin − z, qmax − z)·s`` with ``lo = qmin − z``, ``hi = qmax − z``: 4 passes instead of 6.
    Equal values: shifting an integer-valued float by an integer ``z`` ≤ 255 is exact (beyond 2^24 both forms
    clamp); a value that rounds to −0 stays −0.0 where the reference's ``+ z − z`` makes it +0.0."""
    return (x / scale).round_().clamp_(lo, hi).mul_(scale)


def log2_levels(delta: torch.Tensor, bits: int, *, sqrt2: bool) -> torch.Tensor:
    """Table ``[2^b + 2]`` of :func:`log2_dequant` for every code ``0 … 2^b − 1``, then 0 (underflow), then NaN
    (a NaN input). Built with the reference ops, element by element the same values."""
    n = 2**bits
    q = torch.arange(n, dtype=delta.dtype, device=delta.device)
    vals = log2_dequant(q, torch.zeros(n, dtype=torch.bool, device=delta.device), delta.reshape(1), sqrt2=sqrt2)
    return torch.cat([vals, vals.new_tensor([0.0, math.nan])])  # [2^b + 2]


def log2_fake_quant_levels(x: torch.Tensor, delta: torch.Tensor, bits: int, levels: torch.Tensor, *, sqrt2: bool):
    """:func:`log2_fake_quant` by table look-up (``levels`` from :func:`log2_levels`): the codes come from the
    same ops as :func:`log2_codes`, the dequantization is one gather — 9 passes instead of ~20."""
    check_bits(bits)
    n = 2**bits
    t = x.clamp_min(0)  # [...] own copy, worked on in place
    t.div_(delta).log2_().mul_(-2.0 if sqrt2 else -1.0).round_()
    t.clamp_(0, n).nan_to_num_(nan=n + 1)  # n: underflow (and x == 0, +inf here), n + 1: NaN
    idx = t.to(torch.int32).reshape(-1)  # [numel] (int32: half the bytes of int64, same gather)
    return levels.index_select(0, idx).reshape(x.shape)


def twin_uniform_softmax_fast(x: torch.Tensor, delta1: torch.Tensor, bits: int) -> torch.Tensor:
    """:func:`twin_uniform_softmax` with the range picked first (a per-element step ``Δ1`` or ``Δ2``) and one
    quantization: 6 passes instead of 10, equal values for float32 on CPU (where ``x / python_float`` is the
    float32 division the reference does)."""
    check_bits(bits)
    top = 2 ** (bits - 1) - 1
    d2 = torch.full((1,), 1.0 / top, dtype=x.dtype, device=x.device)
    step = torch.where(x < top * delta1, delta1, d2)  # [...] Δ1 in R1, Δ2 elsewhere
    return (x / step).round_().clamp_(0, top).mul_(step)


def twin_uniform_gelu_fast(x: torch.Tensor, delta_pos: torch.Tensor, bits: int) -> torch.Tensor:
    """:func:`twin_uniform_gelu` with the branch's step picked first: 6 passes instead of 10. One clamp to
    ``[−2^(b−1), 2^(b−1) − 1]`` serves both branches, since a negative ``x`` rounds to ≤ 0 and a positive one to
    ≥ 0 (equal values; float32 on CPU, as :func:`twin_uniform_softmax_fast`)."""
    check_bits(bits)
    top = 2 ** (bits - 1) - 1
    d_neg = torch.full((1,), GELU_MIN / 2 ** (bits - 1), dtype=x.dtype, device=x.device)
    step = torch.where(x < 0, d_neg, delta_pos)  # [...]
    return (x / step).round_().clamp_(-(2 ** (bits - 1)), top).mul_(step)


# -- metrics ------------------------------------------------------------------------------------------------
def sqnr_db(x: torch.Tensor, xq: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10·log10(‖x‖² / ‖x − x̂‖²)`` in dB (inf when exact)."""
    noise = (x.double() - xq.double()).pow(2).sum().item()
    signal = x.double().pow(2).sum().item()
    if noise == 0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-300) / noise)


def channel_absmax(x: torch.Tensor) -> torch.Tensor:
    """``[C]``: the largest ``|x|`` of each last-axis channel of ``x`` (``[..., C]``) over all other axes."""
    return x.detach().abs().reshape(-1, x.shape[-1]).amax(0)


def outlier_channels(absmax: torch.Tensor, ratio: float) -> torch.Tensor:
    """Indices of the input channels whose calibrated ``|x|`` maximum exceeds ``ratio`` × the median channel's
    (``absmax``: ``[C]``). These are the feature dimensions that LLM.int8()'s mixed-precision decomposition
    (Dettmers et al., NeurIPS 2022, §3.2, eq. 3) keeps in floating point, ``XW = X_O W_O + Q⁻¹(Q(X_Ō) Q(W_Ō))``;
    the relative threshold replaces the paper's absolute 6.0, which is tied to LLM hidden-state scales."""
    if absmax.dim() != 1:
        raise ValueError(f"absmax must be a [C] vector, got shape {tuple(absmax.shape)}")
    if not ratio > 1.0:
        raise ValueError(f"ratio must be > 1, got {ratio}")
    med = absmax.float().median()
    return torch.nonzero(absmax.float() > ratio * med).flatten()  # [k]
