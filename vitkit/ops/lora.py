"""Pure tensor math of low-rank adaptation (no nn.Module, no timm): LoRA updates and their aggregation.

Papers:

* LoRA — Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022, Eq. 3:
  ``h = W0 x + ΔW x = W0 x + (α/r) · B A x`` with ``A ∈ R^{r×in}`` (random init), ``B ∈ R^{out×r}`` (zero
  init), so the adapted layer starts as the base layer; after training ``W = W0 + (α/r) B A`` (§4.1, "no
  additional inference latency"). LoRAT (Lin et al., "Tracking Meets LoRA", CVPR 2024) applies the same
  update to ViT linear layers and merges it back for deployment.
* HiRA — Huang et al., "HiRA: Parameter-Efficient Hadamard High-Rank Adaptation for Large Language Models",
  ICLR 2025, its update rule ``ΔW = W0 ⊙ (B A)`` (equation number not checked: the paper is not in the
  project library) — the same factors and parameter count as LoRA, but the Hadamard product with the
  frozen weight lifts the update's rank up to ``rank(W0)·r``; folds back the same way,
  ``W = W0 + (α/r) · W0 ⊙ (B A)``. (Deliberate difference: we keep LoRA's ``α/r`` scale and init.)
* PiSSA — Meng, Wang & Zhang, "PiSSA: Principal Singular Values and Singular Vectors Adaptation of Large
  Language Models", NeurIPS 2024, §3: LoRA's architecture with a different start — with ``W0 = U S Vᵀ``,
  ``B A`` starts as the principal part ``U_r S_r V_rᵀ`` (``A = S_r^{1/2} V_rᵀ``, ``B = U_r S_r^{1/2}``) and the
  frozen weight becomes the residual ``W_res = W0 − B A``, so the model is unchanged at start and training
  moves the principal directions (equation numbers not checked: the paper is not in the project library).
  Deliberate difference: we keep LoRA's ``α/r`` scale ``s`` and divide each factor by ``√s`` so that
  ``s·BA`` is the principal part; the SVD is exact (not the paper's fast randomised variant).
* LoRA-FAIR — Bian et al., "LoRA-FAIR: Federated LoRA Fine-Tuning with Aggregation and Initialization
  Refinement", arXiv 2411.14961, §4: averaging the factors of K clients separately,
  ``B̄ Ā = (Σ p_k B_k)(Σ p_k A_k)``, is not the average update ``ΔW = Σ p_k B_k A_k`` (server-side
  aggregation bias). LoRA-FAIR keeps ``Ā`` and adds a residual correction ``ΔB`` to ``B̄`` so that
  ``(B̄ + ΔB) Ā ≈ ΔW`` while ``ΔB`` stays small (Eq. 6: maximise a similarity S(ΔW, (B̄+ΔB)Ā) − λ‖ΔB‖).

Deliberate difference from LoRA-FAIR: we solve the refinement in closed form as ridge least squares,
``min_B' ‖ΔW − B' Ā‖_F² + λ‖B' − B̄‖_F²`` ⇒ ``B' = (ΔW Āᵀ + λ B̄)(Ā Āᵀ + λ I)⁻¹`` (the paper runs gradient
steps on a cosine-similarity objective); the Frobenius residual is what we test and report.

How much rank a full fine-tuning used (:func:`update_energy`, :func:`truncate_update`): by Eckart–Young the
best rank-r approximation of an update ``ΔW = U Σ Vᵀ`` is ``U_r Σ_r V_rᵀ``, and it keeps the fraction
``Σ_{i≤r} σ_i² / Σ_i σ_i²`` of ``‖ΔW‖_F²`` — the LoRA paper's §7.2 question ("what is the optimal rank?"),
asked of the update full fine-tuning found.

Every function takes plain tensors and never modifies its inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "init_lora",
    "lora_delta",
    "hira_delta",
    "pissa_init",
    "fold_lora",
    "mean_factors",
    "mean_delta",
    "fair_correction",
    "aggregate_lora_factors",
    "relative_error",
    "update_energy",
    "truncate_update",
]


def init_lora(
    rank: int, in_features: int, out_features: int, *, generator: torch.Generator | None = None, dtype=torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRA's initialisation (§4.1): ``A`` Kaiming-uniform (a=√5, as ``nn.Linear``), ``B`` zeros ⇒ ΔW = 0.

    Returns ``(A [r, in], B [out, r])``.
    """
    bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform(a=√5) on a [r, in] matrix: gain·√(3/fan_in) = 1/√in
    a = (torch.rand(rank, in_features, generator=generator, dtype=dtype) * 2 - 1) * bound  # [r, in]
    b = torch.zeros(out_features, rank, dtype=dtype)  # [out, r]
    return a, b


def lora_delta(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """``ΔW = scale · B A`` — ``a [r, in]``, ``b [out, r]`` → ``[out, in]`` (LoRA Eq. 3, scale = α/r)."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
        raise ValueError(f"LoRA factors must be A [r, in] and B [out, r], got {tuple(a.shape)} and {tuple(b.shape)}")
    return float(scale) * (b @ a)


def hira_delta(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """``ΔW = scale · W0 ⊙ (B A)`` ``[out, in]`` (HiRA), in fp32."""
    ba = lora_delta(a.to(torch.float32), b.to(torch.float32), scale)  # [out, in]
    if ba.shape != weight.shape:  # checked before the product, which would broadcast e.g. a [out, 1] weight
        raise ValueError(f"ΔW {tuple(ba.shape)} does not match the weight {tuple(weight.shape)}")
    return weight.to(torch.float32) * ba


def pissa_init(weight: torch.Tensor, rank: int, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PiSSA's start for ``weight [out, in]``: ``(A [r, in], B [out, r], W_res [out, in])`` with
    ``scale · B A = U_r S_r V_rᵀ`` (the top-``rank`` SVD part) and ``W_res = weight − scale · B A``; fp32 SVD,
    results in ``weight``'s dtype. ``weight`` is not modified."""
    if weight.dim() != 2 or not 0 < int(rank) <= min(weight.shape):
        raise ValueError(f"PiSSA needs a 2-D weight and 0 < rank <= {min(weight.shape)}, got {tuple(weight.shape)}")
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    w = weight.detach().to(torch.float32)
    u, sv, vh = torch.linalg.svd(w, full_matrices=False)  # [out, k], [k], [k, in]
    root = (sv[:rank] / float(scale)).sqrt()  # [r]: each factor carries √(σ/s)
    b = u[:, :rank] * root  # [out, r]
    a = root[:, None] * vh[:rank]  # [r, in]
    residual = w - float(scale) * (b @ a)  # [out, in]
    return a.to(weight.dtype), b.to(weight.dtype), residual.to(weight.dtype)


def fold_lora(
    weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float, *, hadamard: bool = False
) -> torch.Tensor:
    """The merged weight ``W0 + scale · B A`` (``hadamard``: ``W0 + scale · W0 ⊙ B A``, HiRA) — a new tensor
    in ``weight``'s dtype."""
    a, b = a.to(torch.float32), b.to(torch.float32)
    delta = hira_delta(weight, a, b, scale) if hadamard else lora_delta(a, b, scale)  # [out, in], fp32
    if delta.shape != weight.shape:
        raise ValueError(f"ΔW {tuple(delta.shape)} does not match the weight {tuple(weight.shape)}")
    return (weight.to(torch.float32) + delta).to(weight.dtype)


def _weights(n: int, weights: Sequence[float] | None) -> list[float]:
    if n == 0:
        raise ValueError("need at least one LoRA update to aggregate")
    if weights is None:
        return [1.0 / n] * n
    w = [float(x) for x in weights]
    if len(w) != n or any(x < 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"weights must be {n} non-negative numbers with a positive sum, got {list(weights)}")
    total = sum(w)
    return [x / total for x in w]


def mean_factors(
    a_list: Sequence[torch.Tensor], b_list: Sequence[torch.Tensor], weights: Sequence[float] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """FedAvg of the factors: ``(Ā, B̄) = (Σ p_k A_k, Σ p_k B_k)`` — the naive (biased) aggregation."""
    if len(a_list) != len(b_list):
        raise ValueError(f"{len(a_list)} A factors but {len(b_list)} B factors")
    p = _weights(len(a_list), weights)
    a_bar = sum(pk * a.to(torch.float32) for pk, a in zip(p, a_list, strict=True))  # [r, in]
    b_bar = sum(pk * b.to(torch.float32) for pk, b in zip(p, b_list, strict=True))  # [out, r]
    return a_bar, b_bar


def mean_delta(
    a_list: Sequence[torch.Tensor], b_list: Sequence[torch.Tensor], weights: Sequence[float] | None = None
) -> torch.Tensor:
    """The ideal aggregated update ``ΔW = Σ p_k B_k A_k`` ``[out, in]`` (scale not applied)."""
    p = _weights(len(a_list), weights)
    return sum(pk * (b.to(torch.float32) @ a.to(torch.float32)) for pk, a, b in zip(p, a_list, b_list, strict=True))


def fair_correction(delta: torch.Tensor, a_bar: torch.Tensor, b_bar: torch.Tensor, lam: float = 1e-5) -> torch.Tensor:
    """LoRA-FAIR's residual correction ``ΔB`` (closed-form ridge version, see module docstring).

    ``B' = (ΔW Āᵀ + λ B̄)(Ā Āᵀ + λ I)⁻¹`` minimises ``‖ΔW − B'Ā‖² + λ‖B' − B̄‖²``; returns ``ΔB = B' − B̄``
    ``[out, r]``. ``lam`` is relative to the mean diagonal of ``Ā Āᵀ`` so it does not depend on the scale.
    """
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    gram = a_bar @ a_bar.T  # [r, r]
    r = gram.shape[0]
    reg = float(lam) * float(gram.diagonal().mean().clamp_min(1e-12))
    rhs = delta @ a_bar.T + reg * b_bar  # [out, r]
    eye = torch.eye(r, dtype=gram.dtype, device=gram.device)
    # B' (G + reg I) = rhs  ⇔  (G + reg I) B'ᵀ = rhsᵀ   (G symmetric)
    b_new = torch.linalg.solve(gram + reg * eye, rhs.T).T  # [out, r]
    return b_new - b_bar


def aggregate_lora_factors(
    a_list: Sequence[torch.Tensor],
    b_list: Sequence[torch.Tensor],
    weights: Sequence[float] | None = None,
    *,
    method: str = "fair",
    lam: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``(A, B)`` pair from K client updates: ``method="mean"`` (FedAvg of factors) or ``"fair"``
    (FedAvg + LoRA-FAIR residual correction on B). Rank is kept; all clients must share it."""
    ranks = {int(a.shape[0]) for a in a_list} | {int(b.shape[1]) for b in b_list}
    if len(ranks) != 1:
        raise ValueError(f"all LoRA updates must have the same rank to be aggregated, got ranks {sorted(ranks)}")
    a_bar, b_bar = mean_factors(a_list, b_list, weights)
    if method == "mean":
        return a_bar, b_bar
    if method == "fair":
        return a_bar, b_bar + fair_correction(mean_delta(a_list, b_list, weights), a_bar, b_bar, lam)
    raise ValueError(f"method must be 'mean' or 'fair', got {method!r}")


def relative_error(approx: torch.Tensor, target: torch.Tensor) -> float:
    """``‖approx − target‖_F / ‖target‖_F`` (0 when both are zero)."""
    denom = float(target.norm())
    diff = float((approx - target).norm())
    return diff / denom if denom > 0 else diff


def update_energy(delta: torch.Tensor, ranks: Sequence[int]) -> list[float]:
    """Fraction of ``‖ΔW‖_F²`` in the top-``r`` singular directions, for each ``r`` in ``ranks`` (1.0 for
    ``r ≥ min(out, in)``; 0-update → 1.0). ``delta [out, in]``."""
    s2 = torch.linalg.svdvals(delta.to(torch.float32)) ** 2  # [min(out, in)], descending
    total = float(s2.sum())
    if total == 0.0:
        return [1.0 for _ in ranks]
    cum = torch.cumsum(s2, 0) / total
    return [float(cum[min(int(r), len(cum)) - 1]) if int(r) > 0 else 0.0 for r in ranks]


def truncate_update(delta: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-``rank`` approximation of ``delta [out, in]`` (truncated SVD), in ``delta``'s dtype."""
    if int(rank) <= 0:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    u, s, vh = torch.linalg.svd(delta.to(torch.float32), full_matrices=False)  # [out, k], [k], [k, in]
    r = min(int(rank), s.numel())
    return ((u[:, :r] * s[:r]) @ vh[:r]).to(delta.dtype)
