"""Pure per-tensor math of model merging (no nn.Module, no timm): task vectors, TIES, DARE, OPCM, FW, RegMean, PLeaS.

Every function takes and returns plain tensors of one parameter (or one layer's statistics) and never
modifies its inputs. Papers:

* Task Arithmetic — Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023: τ_t = θ_t − θ0,
  θ = θ0 + λ Σ_t τ_t (§2, Eq. 1).
* TIES — Yadav et al., "TIES-Merging", NeurIPS 2023, Algorithm 1: trim, elect sign, disjoint merge.
* DARE — Yu et al., "Language Models are Super Mario", ICML 2024, Eq. 2: m ~ Bernoulli(p),
  τ̃ = (1 − m) ⊙ τ / (1 − p).
* OPCM — Tang et al., "Merging Models on the Fly Without Retraining", arXiv 2501.09522: orthogonal
  projection of each new task vector against the merged update's dominant singular subspace + adaptive
  scaling λ_t (§3, Eqs. 6–9; reference implementation fusion_bench/method/opcm).
* FW-Merging — Chen et al., arXiv 2503.12649, Algorithm 1: Frank-Wolfe step θ ← θ + γ_k (s_k − θ),
  γ_k = 2 / (k + 2).
* RegMean — Jin et al., "Dataless Knowledge Fusion by Merging Weights of Language Models", ICLR 2023,
  Eq. 3: W* = (Σ_t G̃_t)⁻¹ Σ_t G̃_t W_t (W stored [in, out]), G̃ = α G + (1 − α) diag(G).
* PLeaS — Nasery et al., "PLeaS: Merging Models with Permutations and Least Squares", CVPR 2025 (§3.1
  permutation matching by linear assignment, §3.2 layer-wise least squares).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "weighted_average",
    "task_vector",
    "task_arithmetic",
    "ties_trim",
    "ties_elect_sign",
    "ties_disjoint_merge",
    "ties_merge",
    "dare_drop",
    "opcm_split_rank",
    "opcm_project",
    "opcm_project_full",
    "frank_wolfe_gamma",
    "frank_wolfe_step",
    "regmean_gram_reduce",
    "regmean_merge",
    "feature_correlation",
    "hungarian",
    "match_permutation",
    "least_squares_fit",
]


def weighted_average(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Σ_i w_i θ_i (weights are used as given; normalising is the caller's decision). Same shape as the inputs."""
    if len(tensors) != len(weights) or not tensors:
        raise ValueError(f"need one weight per tensor, got {len(tensors)} tensors and {len(weights)} weights")
    out = torch.zeros_like(tensors[0])
    for t, w in zip(tensors, weights, strict=True):
        out.add_(t, alpha=float(w))
    return out


def task_vector(finetuned: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """τ = θ_ft − θ0 (Ilharco et al., Eq. 1)."""
    return finetuned - base


def task_arithmetic(base: torch.Tensor, taus: Sequence[torch.Tensor], scales: Sequence[float]) -> torch.Tensor:
    """θ = θ0 + Σ_t λ_t τ_t (Ilharco et al. with one λ per task; the paper uses a single shared λ)."""
    return base + weighted_average(taus, scales)


def ties_trim(tau: torch.Tensor, density: float) -> torch.Tensor:
    """TIES step 1 (Alg. 1 "trim"): keep the top ``density`` fraction of |τ| in this tensor, zero the rest.

    Per tensor (like mergekit), not over the whole flattened model as in the paper's code: this is what lets
    the merge stream one tensor at a time. Ties at the threshold are kept (k = ceil(density · numel)).
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if density >= 1.0 or tau.numel() == 0:
        return tau.clone()
    k = max(1, math.ceil(density * tau.numel()))
    flat = tau.abs().flatten()  # [numel]
    thresh = flat.kthvalue(flat.numel() - k + 1).values
    return torch.where(tau.abs() >= thresh, tau, torch.zeros_like(tau))


def ties_elect_sign(taus: torch.Tensor) -> torch.Tensor:
    """TIES step 2 (Alg. 1 "elect"): γ = sgn(Σ_t τ̂_t) per coordinate; ``taus`` is [T, ...] → [...] in {−1, 0, 1}.

    A coordinate whose trimmed values sum to exactly 0 gets sign +1 when any value is non-zero (the paper
    leaves it undefined; FusionBench gives it the majority sign of the total mass — here +1, documented).
    """
    total = taus.sum(0)  # [...]
    sign = torch.sign(total)
    return torch.where((sign == 0) & (taus != 0).any(0), torch.ones_like(sign), sign)


def ties_disjoint_merge(taus: torch.Tensor, sign: torch.Tensor, *, aggregate: str = "mean") -> torch.Tensor:
    """TIES step 3 (Alg. 1 "disjoint merge"): combine the entries that agree with the elected sign.

    ``taus`` [T, ...], ``sign`` [...]. ``aggregate="mean"`` is the paper's disjoint mean over
    A^p = {t : sgn(τ̂_t^p) = γ^p}; ``"sum"`` is FusionBench's default variant.
    """
    agree = (torch.sign(taus) == sign.unsqueeze(0)) & (taus != 0)  # [T, ...]
    kept = torch.where(agree, taus, torch.zeros_like(taus))
    if aggregate == "sum":
        return kept.sum(0)
    if aggregate == "mean":
        count = agree.sum(0).clamp_min(1).to(taus.dtype)
        return kept.sum(0) / count
    raise ValueError(f"aggregate must be 'mean' or 'sum', got {aggregate!r}")


def ties_merge(taus: Sequence[torch.Tensor], density: float, *, aggregate: str = "mean") -> torch.Tensor:
    """TIES τ_m for one tensor: trim each τ_t to ``density``, elect signs, disjoint merge. Returns τ_m [...]."""
    trimmed = torch.stack([ties_trim(t, density) for t in taus])  # [T, ...]
    return ties_disjoint_merge(trimmed, ties_elect_sign(trimmed), aggregate=aggregate)


def dare_drop(tau: torch.Tensor, p: float, generator: torch.Generator, *, rescale: bool = True) -> torch.Tensor:
    """DARE (Yu et al., Eq. 2): drop each entry with probability ``p``, rescale survivors by 1/(1 − p).

    ``generator`` makes it reproducible; the caller seeds it per (model, tensor).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"drop probability must be in [0, 1), got {p}")
    if p == 0.0:
        return tau.clone()
    keep = torch.rand(tau.shape, generator=generator, dtype=torch.float32) >= p  # [...] bool
    out = torch.where(keep, tau, torch.zeros_like(tau))
    return out / (1.0 - p) if rescale else out


# -- OPCM ------------------------------------------------------------------------------------------------------
def opcm_split_rank(s: torch.Tensor, alpha: float) -> int:
    """r = first index where cumsum(S)/sum(S) > α (0 when S is all zero): the size of the protected block."""
    total = s.sum()
    if float(total) <= 0.0:
        return 0
    over = (s.cumsum(0) / total) > alpha
    return int(over.float().argmax()) if bool(over.any()) else 0


def opcm_project(merged_delta: torch.Tensor, tau: torch.Tensor, alpha: float) -> torch.Tensor:
    """OPCM's orthogonal projection of a new task vector against the merged update (per 2-D weight matrix).

    With D = θ_merged − θ0 = U diag(S) Vᵀ, P = Uᵀ τ V: zero P's diagonal and its top-left r×r block, then
    τ' = U P Vᵀ (Tang et al. §3, Eq. 6; r from :func:`opcm_split_rank`). Computed with the *reduced* SVD
    (k = min(m, n)), which is exact:  τ' = τ − U_r (U_rᵀ τ V_r) V_rᵀ − Σ_{r≤i<k} (u_iᵀ τ v_i) u_i v_iᵀ.
    ``merged_delta`` and ``tau`` are [m, n]; returns [m, n]. A zero ``merged_delta`` leaves τ unchanged.
    """
    if merged_delta.ndim != 2 or merged_delta.shape != tau.shape:
        raise ValueError(f"opcm_project needs two equal 2-D shapes, got {merged_delta.shape} and {tau.shape}")
    dtype = tau.dtype
    d, t = merged_delta.to(torch.float64), tau.to(torch.float64)
    if not bool(d.any()):
        return tau.clone()
    u, s, vh = torch.linalg.svd(d, full_matrices=False)  # u [m, k], s [k], vh [k, n]
    v = vh.T  # [n, k]
    r = opcm_split_rank(s, alpha)
    out = t.clone()
    if r > 0:
        ur, vr = u[:, :r], v[:, :r]  # [m, r], [n, r]
        out -= ur @ (ur.T @ t @ vr) @ vr.T
    diag = ((u[:, r:].T @ t) * v[:, r:].T).sum(1)  # [k - r]: d_i = u_iᵀ τ v_i
    out -= (u[:, r:] * diag) @ v[:, r:].T
    return out.to(dtype)


def opcm_project_full(merged_delta: torch.Tensor, tau: torch.Tensor, alpha: float) -> torch.Tensor:
    """Reference full-SVD form of :func:`opcm_project` (slow; tests check the two agree)."""
    d, t = merged_delta.to(torch.float64), tau.to(torch.float64)
    if not bool(d.any()):
        return tau.clone()
    u, s, vh = torch.linalg.svd(d, full_matrices=True)  # u [m, m], vh [n, n]
    v = vh.T
    r = opcm_split_rank(s, alpha)
    p = u.T @ t @ v  # [m, n]
    p.diagonal().zero_()
    p[:r, :r] = 0
    return (u @ p @ v.T).to(tau.dtype)


# -- Frank-Wolfe ------------------------------------------------------------------------------------------------
def frank_wolfe_gamma(k: int, step_size: float = 1.0) -> float:
    """The classic open-loop FW step γ_k = step_size · 2 / (k + 2) (FW-Merging Alg. 1)."""
    return step_size * 2.0 / (k + 2.0)


def frank_wolfe_step(theta: torch.Tensor, vertex: torch.Tensor, gamma: float) -> torch.Tensor:
    """θ ← θ + γ (s − θ): move toward the selected vertex s of the constraint set."""
    return theta + gamma * (vertex - theta)


# -- RegMean ----------------------------------------------------------------------------------------------------
def regmean_gram_reduce(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """G̃ = α G + (1 − α) diag(G) (RegMean §3.2, "reducing non-diagonal items"); ``gram`` [in, in]."""
    return alpha * gram + (1.0 - alpha) * torch.diag(torch.diagonal(gram))


def regmean_merge(
    weights: Sequence[torch.Tensor], grams: Sequence[torch.Tensor], *, alpha: float = 0.95
) -> torch.Tensor:
    """RegMean closed form for one linear layer (Jin et al., Eq. 3).

    ``weights`` are torch ``nn.Linear`` weights [out, in] (= Wᵀ of the paper), ``grams`` G_t = X_tᵀX_t [in, in].
    Returns [out, in]: W* = (Σ G̃_t W_tᵀ)ᵀ (Σ G̃_t)⁻¹ solved in float64 (pseudo-inverse if singular).
    """
    acc_g = sum(regmean_gram_reduce(g.double(), alpha) for g in grams)  # [in, in]
    acc_gw = sum(regmean_gram_reduce(g.double(), alpha) @ w.double().T for g, w in zip(grams, weights, strict=True))
    return regmean_solve(acc_g, acc_gw).to(weights[0].dtype)


def regmean_solve(sum_g: torch.Tensor, sum_gw: torch.Tensor) -> torch.Tensor:
    """W*ᵀ = (Σ G̃)⁻¹ Σ G̃ Wᵀ from accumulated sums ([in, in], [in, out]) → W* [out, in], float64."""
    try:
        sol = torch.linalg.solve(sum_g, sum_gw)  # [in, out]
    except RuntimeError:  # singular: least-norm solution
        sol = torch.linalg.lstsq(sum_g, sum_gw).solution
    return sol.T.contiguous()


# -- PLeaS ------------------------------------------------------------------------------------------------------
def feature_correlation(feats_a: torch.Tensor, feats_b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of every unit of A with every unit of B: ``feats_*`` [samples, units] → [U_a, U_b]
    (float64). Constant units get correlation 0."""
    a, b = feats_a.double(), feats_b.double()
    a = (a - a.mean(0)) / (a.std(0) + 1e-8)  # [S, U_a]
    b = (b - b.mean(0)) / (b.std(0) + 1e-8)  # [S, U_b]
    return (a.T @ b) / a.shape[0]


def hungarian(score: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Maximum-score assignment of a square [U, U] score matrix (scipy ``linear_sum_assignment``).

    Returns (perm [U], total score): row ``j`` is matched with column ``perm[j]``.
    """
    from scipy.optimize import linear_sum_assignment

    sc = score.detach().double().cpu().numpy()
    rows, cols = linear_sum_assignment(sc, maximize=True)
    perm = torch.empty(sc.shape[0], dtype=torch.long)
    perm[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return perm, float(sc[rows, cols].sum())


def match_permutation(feats_a: torch.Tensor, feats_b: torch.Tensor) -> torch.Tensor:
    """Permutation π of B's units that best matches A's (PLeaS §3.1 / Git Re-Basin activation matching).

    ``feats_*`` are [samples, units] activations of the same layer of two models on the same inputs.
    Maximises Σ_j corr(a_j, b_π(j)) with the Hungarian method (scipy ``linear_sum_assignment``).
    Returns an index tensor [units]: ``b[:, perm]`` is aligned with ``a``.
    """
    return hungarian(feature_correlation(feats_a, feats_b))[0]


def least_squares_fit(x: torch.Tensor, y: torch.Tensor, *, ridge: float = 1e-4, bias: bool = True):
    """argmin_{W,b} ‖X Wᵀ + b − Y‖² + ridge·‖W‖² in closed form (PLeaS §3.2's layer-wise objective).

    ``x`` [samples, in], ``y`` [samples, out]. Returns (W [out, in], b [out] or None), float32. PLeaS fits
    this with ~400 Adam steps; the normal equations give its exact minimiser.
    """
    xd, yd = x.double(), y.double()
    if bias:
        xd = torch.cat([xd, torch.ones(xd.shape[0], 1, dtype=xd.dtype)], 1)  # [S, in + 1]
    gram = xd.T @ xd  # [in(+1), in(+1)]
    scale = float(gram.diagonal().mean()) if gram.numel() else 1.0
    reg = ridge * max(scale, 1e-12) * torch.eye(gram.shape[0], dtype=gram.dtype)
    if bias:
        reg[-1, -1] = 0.0
    sol = torch.linalg.solve(gram + reg, xd.T @ yd)  # [in(+1), out]
    if bias:
        return sol[:-1].T.float().contiguous(), sol[-1].float().contiguous()
    return sol.T.float().contiguous(), None
