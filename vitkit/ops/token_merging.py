"""Token reduction math on plain tensors: matching, merging, pruning selections (no nn.Module, no timm).

Every selection returns a :class:`TokenReduction` — index tensors saying which input tokens survive (in
output order) and which are merged into which output position. ``merge`` then computes the
(size-)weighted average; ``unmerge`` scatters back to full length. Only ``gather`` and ``scatter_add``
are used, so graphs export to ONNX (opset ≥ 16) and run in ONNX Runtime (``scatter_reduce`` does not).

Conventions: ``x`` is ``[B, N, C]``; the first ``num_protected`` tokens (cls, dist, registers) are never
merged or dropped and stay first, in order; ``size`` is ``[B, N, 1]`` (patches a token stands for).

Papers:
* ToMe — Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023 (§3, bipartite soft matching).
* EViT — Liang et al., "Not All Patches are What You Need", ICLR 2022 (§3.2, Eq. 4–5).
* PiToMe — Tran et al., "Accelerating Transformers with Spectrum-Preserving Token Merging", NeurIPS 2024
  (§3.2, Eq. 4–6).
* HiPrune — Liu et al., "HiPrune: Training-Free Visual Token Pruning via Hierarchical Attention", 2025 (§3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = [
    "TokenReduction",
    "BSM_ORDERS",
    "PITOME_ENERGIES",
    "PITOME_SPLITS",
    "bipartite_soft_matching",
    "evit_select",
    "gather_tokens",
    "hiprune_select",
    "pitome_energy",
    "pitome_matching",
    "proportional_attention_bias",
    "random_drop",
]


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[b, idx[b, k]]`` for ``x`` ``[B, N, C]`` and ``idx`` ``[B, K]`` → ``[B, K, C]``.

    A row ``index_select`` on the flattened batch (ONNX ``Gather``): ~30× faster on CPU than
    ``torch.gather`` with an expanded index, which reads one index per element.
    """
    return gather_rows(x, flat_rows(idx, x.shape[1]), idx.shape[1])


def flat_rows(idx: torch.Tensor, n: int) -> torch.Tensor:
    """``[B, K]`` token indices into ``[B, n, ·]`` → ``[B·K]`` row indices of the flattened batch."""
    return (idx + torch.arange(idx.shape[0], device=idx.device).unsqueeze(1) * n).reshape(-1)


def gather_rows(x: torch.Tensor, flat: torch.Tensor, k: int) -> torch.Tensor:
    """:func:`gather_tokens` with the row indices of :func:`flat_rows` given (``k`` tokens per sample)."""
    B, N, C = x.shape
    return x.reshape(B * N, C).index_select(0, flat).reshape(B, k, C)


@dataclass
class TokenReduction:
    """Which tokens survive and which merge where.

    keep: ``[B, N']`` input indices of the output tokens, in output order (a merge destination keeps its
    own slot). src/dst: ``[B, R]`` input indices merged away and the *output* positions they join;
    ``None`` for a pure pruning (dropped tokens vanish). ``num_input`` is N.
    """

    keep: torch.Tensor
    src: torch.Tensor | None
    dst: torch.Tensor | None
    num_input: int
    _flat_keep: torch.Tensor | None = field(default=None, repr=False, compare=False)
    _flat_src: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def num_output(self) -> int:
        return self.keep.shape[1]

    def merge(
        self, x: torch.Tensor, size: torch.Tensor | None = None, weight: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reduce ``x`` ``[B, N, C]`` → ``[B, N', C]``; returns ``(x', size')``.

        Merged tokens are averaged with weights ``weight`` ``[B, N, 1]`` (default: ``size``, ToMe's
        size-weighted average, §3); sizes add up. Kept-alone tokens come out unchanged, bit for bit.

        The average is computed as a pull of each destination toward its sources, ``x_d + Σ_s (w_s / W_d)(x_s −
        x_d)`` with ``W_d = w_d + Σ_s w_s`` — equal to ``(w_d x_d + Σ_s w_s x_s) / W_d`` up to rounding, but it
        touches only the ``R`` merged rows instead of weighting and dividing every token.
        """
        if size is None:  # first reduction: every size is 1
            size = x.new_ones(x.shape[0], x.shape[1], 1)
        size_out = self.add_up(size)  # [B, N', 1]
        out = self._keep_rows(x)  # [B, N', C]: every output token starts as its kept token
        if self.src is None:  # pruning: a plain gather, bit-exact
            return out, size_out
        w = size if weight is None else weight  # [B, N, 1]
        total = size_out if weight is None else self.add_up(w)  # W_d, [B, N', 1]
        dst_1 = self.dst.unsqueeze(-1)  # [B, R, 1]
        dst_c = dst_1.expand(-1, -1, x.shape[-1])  # [B, R, C]
        share = self._src_rows(w) / total.gather(1, dst_1)  # w_s / W_d, [B, R, 1]
        pull = (self._src_rows(x) - out.gather(1, dst_c)) * share  # [B, R, C], against the destination's own value
        if out.requires_grad:  # the gather above saved ``out`` for its backward: add out of place
            return out.scatter_add(1, dst_c, pull), size_out
        return out.scatter_add_(1, dst_c, pull), size_out

    def add_up(self, t: torch.Tensor) -> torch.Tensor:
        """Reduce ``t`` ``[B, N, C]`` → ``[B, N', C]`` by summing: a merged token's value is the sum of its
        sources' (how token sizes merge, and any size-weighted sum that follows them)."""
        out = self._keep_rows(t)  # [B, N', C]
        if self.src is None:
            return out
        return out.scatter_add_(1, self.dst.unsqueeze(-1).expand(-1, -1, t.shape[-1]), self._src_rows(t))

    def _keep_rows(self, x: torch.Tensor) -> torch.Tensor:
        """``gather_tokens(x, keep)`` with the flat row indices computed once per reduction (a merge gathers
        with them up to six times per block)."""
        if self._flat_keep is None:
            self._flat_keep = flat_rows(self.keep, self.num_input)
        return gather_rows(x, self._flat_keep, self.keep.shape[1])

    def _src_rows(self, x: torch.Tensor) -> torch.Tensor:
        """``gather_tokens(x, src)``, flat row indices cached like :meth:`_keep_rows`."""
        if self._flat_src is None:
            self._flat_src = flat_rows(self.src, self.num_input)
        return gather_rows(x, self._flat_src, self.src.shape[1])

    def unmerge(self, y: torch.Tensor) -> torch.Tensor:
        """Back to ``[B, N, C]``: every merged token gets a copy of its destination; dropped tokens are 0."""
        B, _, C = y.shape
        full = y.new_zeros(B, self.num_input, C)
        full = full.scatter(1, self.keep.unsqueeze(-1).expand(-1, -1, C), y)
        if self.src is not None:
            full = full.scatter(1, self.src.unsqueeze(-1).expand(-1, -1, C), gather_tokens(y, self.dst))
        return full

    def gather_index(self, index: torch.Tensor) -> torch.Tensor:
        """Follow a per-token ``[B, N]`` tensor (e.g. original positions) to the output tokens."""
        return index.gather(1, self.keep)


def _prefix(batch: int, num_protected: int, device: torch.device) -> torch.Tensor:
    return torch.arange(num_protected, device=device).unsqueeze(0).expand(batch, -1)  # [B, P]


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate index blocks along tokens, skipping empty ones (ONNX shape inference trips on them)."""
    parts = [p for p in parts if p.shape[1] > 0]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def proportional_attention_bias(size: torch.Tensor) -> torch.Tensor:
    """ToMe proportional attention (§3, "softmax(QKᵀ/√d + log s)"): ``[B, N, 1]`` sizes → ``[B, 1, 1, N]``."""
    return size.log().transpose(1, 2).unsqueeze(1)


def _strongest_edges(scores: torch.Tensor, r: int, blocked_rows: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """ToMe §3 bipartite soft matching, steps 2–3: every A token's edge to its most similar B token, A tokens
    ranked by edge strength (strongest first; the first ``blocked_rows`` A tokens rank last), and the B partner
    of each of the ``r`` strongest.

    ``scores`` ``[B, Na, Nb]`` → ``(ranked [B, Na], partner [B, r])``. The same result as ``scores.max(-1)`` (both
    take the first of tied maxima), but the partner index is found for the ``r`` merged rows only: a max with
    indices over every row is ~10× slower on CPU than the plain ``amax`` the ranking needs."""
    Na = scores.shape[1]
    best = scores.amax(dim=-1)  # [B, Na]
    if blocked_rows > 0:
        best = best.masked_fill(torch.arange(Na, device=scores.device) < blocked_rows, float("-inf"))
    ranked = best.argsort(dim=-1, descending=True)  # [B, Na]
    partner = gather_rows(scores, flat_rows(ranked[:, :r], Na), r).argmax(dim=-1)  # [B, r]
    return ranked, partner


#: Token orders of :func:`bipartite_soft_matching` (see its docstring).
BSM_ORDERS = ("reference", "similarity")


def bipartite_soft_matching(
    metric: torch.Tensor, r: int, num_protected: int = 1, *, order: str = "reference"
) -> TokenReduction:
    """ToMe bipartite soft matching (Bolya et al. 2023, §3 "Bipartite Soft Matching").

    ``metric`` ``[B, N, C]`` (attention keys averaged over heads); the first ``num_protected`` tokens are
    never merged. ``r`` is capped at ``(N − num_protected) // 2`` (at most 50 % of the unprotected tokens
    per layer, as in the paper). Each A token draws an edge to its most cosine-similar B token; the ``r``
    strongest edges are merged (A token → its B partner). Output order: ``[protected, unmerged A, B]``.

    ``order`` fixes the A/B split and the order of the unmerged A tokens — it decides the next layer's
    alternation, so the two give different outputs:

    * ``"reference"`` (the published code, ``tome/merge.py``): A/B alternate over the *whole* sequence
      (A = positions 0, 2, 4, …, B = 1, 3, 5, …), protected tokens taking part in the split but never
      matched (the reference's cls row / dist column at ``-inf``); the unmerged A tokens go back to
      position order whenever tokens are protected (the reference's ``unm_idx.sort``, done when the model
      has a class token) and stay in similarity order otherwise. For cls (+ dist) this is the reference's
      ``[cls, (dist,) unm…, dst…]`` exactly.
    * ``"similarity"`` (vitkit's earlier default): A/B alternate over the unprotected tokens only (the first patch is
      in A), and the unmerged A tokens stay in descending-similarity order.
    """
    B, N, _ = metric.shape
    P = num_protected
    r = min(int(r), (N - P) // 2)
    dev = metric.device
    if order not in BSM_ORDERS:
        raise ValueError(f"bipartite_soft_matching: order must be one of {BSM_ORDERS}, got {order!r}")
    if r <= 0:
        return TokenReduction(torch.arange(N, device=dev).unsqueeze(0).expand(B, -1), None, None, N)
    if order == "similarity":
        return _bsm_similarity_order(metric, r, P)
    m = F.normalize(metric, dim=-1)  # [B, N, C]
    a, b = m[:, 0::2], m[:, 1::2]  # [B, Na, C], [B, Nb, C]: even / odd positions of the whole sequence
    Nb = b.shape[1]
    pa, pb = (P + 1) // 2, P // 2  # protected tokens in A (even positions < P) and in B (odd ones)
    scores = a @ b.transpose(-1, -2)  # [B, Na, Nb]
    if pb > 0:  # protected B columns are never a partner
        scores = scores.masked_fill(torch.arange(Nb, device=dev) < pb, float("-inf"))
    ranked, dst_b = _strongest_edges(scores, r, pa)  # protected A rows (-inf) rank last; dst_b all ≥ pb
    src_a, unm_a = ranked[:, :r], ranked[:, r:]  # [B, r], [B, Na - r]
    if P > 0:
        unm_a = unm_a.sort(dim=-1).values[:, pa:]  # position order; protected A tokens were first → dropped
    b_idx = 1 + 2 * torch.arange(pb, Nb, device=dev).unsqueeze(0).expand(B, -1)  # [B, Nb - pb]
    keep = _cat([_prefix(B, P, dev), 2 * unm_a, b_idx])  # [B, N - r]
    dst = P + unm_a.shape[1] + (dst_b - pb)  # output positions of the B partners
    return TokenReduction(keep, 2 * src_a, dst, N)


def _bsm_similarity_order(metric: torch.Tensor, r: int, P: int) -> TokenReduction:
    """``order="similarity"``: A/B alternate after the prefix, unmerged A kept in similarity order."""
    B = metric.shape[0]
    dev = metric.device
    m = F.normalize(metric[:, P:], dim=-1)  # [B, T, C]
    a, b = m[:, 0::2], m[:, 1::2]  # [B, Ta, C], [B, Tb, C]
    scores = a @ b.transpose(-1, -2)  # [B, Ta, Tb]
    ranked, dst_b = _strongest_edges(scores, r)  # [B, Ta], [B, r]
    src_a, unm_a = ranked[:, :r], ranked[:, r:]  # [B, r], [B, Ta - r]
    Ta, Tb = a.shape[1], b.shape[1]
    b_idx = P + 1 + 2 * torch.arange(Tb, device=dev).unsqueeze(0).expand(B, -1)  # [B, Tb]
    keep = _cat([_prefix(B, P, dev), P + 2 * unm_a, b_idx])  # [B, N - r]
    dst = P + (Ta - r) + dst_b
    return TokenReduction(keep, P + 2 * src_a, dst, metric.shape[1])


def evit_select(cls_attn: torch.Tensor, keep: int, num_protected: int = 1, fuse: bool = True) -> TokenReduction:
    """EViT token reorganisation (Liang et al. 2022, §3.2): keep the ``keep`` most attentive patch tokens.

    ``cls_attn`` ``[B, N]`` is the [CLS] attention row averaged over heads (Eq. 4). With ``fuse`` the
    inattentive tokens are fused into one extra token placed last (Eq. 5; pass ``cls_attn`` as the merge
    ``weight``); otherwise they are dropped.
    """
    B, N = cls_attn.shape
    P = num_protected
    T = N - P
    keep = max(1, min(int(keep), T))
    dev = cls_attn.device
    order = cls_attn[:, P:].argsort(dim=-1, descending=True)  # [B, T]
    top, rest = order[:, :keep], order[:, keep:]  # [B, keep], [B, T - keep]
    if not fuse or rest.shape[1] == 0:
        return TokenReduction(_cat([_prefix(B, P, dev), P + top]), None, None, N)
    keep_idx = _cat([_prefix(B, P, dev), P + top, P + rest[:, :1]])  # [B, P + keep + 1]
    src = P + rest[:, 1:]  # [B, T - keep - 1]
    dst = torch.full_like(src, P + keep)
    return TokenReduction(keep_idx, src, dst, N)


PITOME_ENERGIES = ("elu", "eq4")
PITOME_SPLITS = ("pitome", "bsm")


def pitome_energy(metric: torch.Tensor, margin: float, alpha: float = 1.0, *, form: str = "elu") -> torch.Tensor:
    """PiToMe energy score (Tran et al. 2024, Eq. 4): ``E_i = 1/N Σ_j f_m(cos(v_i, v_j))`` over all ``N``
    tokens of ``metric`` (``j = i`` included). Returns ``(energy [B, T], cosine similarity [B, T, T])``.

    ``form`` chooses ``f_m``:

    * ``"elu"`` (default, the published code ``algo/pitome/merge.py``): ``f_m(x) = ELU_α(x − m)``, i.e.
      ``x − m`` at or above the margin and ``α(exp(x − m) − 1)`` below — continuous at ``m``.
    * ``"eq4"``: Eq. 4 as printed, ``f_m(x) = x`` at or above the margin and ``α(exp(x − m) − 1)`` below
      (jumps by ``m`` at the margin). Differs from ``"elu"`` by ``m · |{j : cos ≥ m}| / N`` per token,
      which reorders tokens; vitkit's version-1 PiToMe used it.
    """
    if form not in PITOME_ENERGIES:
        raise ValueError(f"pitome_energy: form must be one of {PITOME_ENERGIES}, got {form!r}")
    m = F.normalize(metric, dim=-1)  # [B, T, C]
    sim = m @ m.transpose(-1, -2)  # [B, T, T]
    below = alpha * (torch.exp(sim - margin) - 1)  # not expm1: ONNX has no such op
    above = sim - margin if form == "elu" else sim
    f = torch.where(sim >= margin, above, below)  # [B, T, T]
    return f.mean(dim=-1), sim


def pitome_matching(
    metric: torch.Tensor,
    r: int,
    num_protected: int = 1,
    *,
    margin: float = 0.5,
    alpha: float = 1.0,
    energy: str = "elu",
    split: str = "pitome",
) -> TokenReduction:
    """PiToMe energy-ordered matching (Tran et al. 2024, §3.2, Alg. 1); removes exactly ``r`` tokens.

    The unprotected tokens are sorted by energy (Eq. 4, see :func:`pitome_energy`), highest first; along
    that order they alternate into A (ranks 0, 2, 4, …) and B (1, 3, 5, …). ``split``:

    * ``"pitome"``: only the ``2r`` highest-energy tokens (large clusters) are mergeable, the other ``T − 2r``
      — isolated, informative — are protected; *every* A token merges into its most similar B token
      (reference ``pitome``). Output ``[protected prefix, protected by energy, B]``.
    * ``"bsm"``: ToMe's bipartite soft matching over *all* tokens with the energy-ordered A/B split: each
      A token's best B edge, the ``r`` strongest edges merge (reference ``pitome_bsm``, which the reference
      DeiT patch uses in the first half of the layers). Output ``[prefix, unmerged A by edge strength, B]``.
    """
    if split not in PITOME_SPLITS:
        raise ValueError(f"pitome_matching: split must be one of {PITOME_SPLITS}, got {split!r}")
    B, N, _ = metric.shape
    P = num_protected
    T = N - P
    r = min(int(r), T // 2)
    dev = metric.device
    if r <= 0:
        return TokenReduction(torch.arange(N, device=dev).unsqueeze(0).expand(B, -1), None, None, N)
    score, sim = pitome_energy(metric[:, P:], margin, alpha, form=energy)  # [B, T], [B, T, T]
    order = score.argsort(dim=-1, descending=True)  # [B, T]
    if split == "pitome":
        mergeable, protected = order[:, : 2 * r], order[:, 2 * r :]  # [B, 2r], [B, T - 2r]
        a, b = mergeable[:, 0::2], mergeable[:, 1::2]  # [B, r] each
        sim_ab = gather_tokens(sim, a).gather(2, b.unsqueeze(1).expand(-1, r, -1))  # [B, r, r]
        dst_b = sim_ab.argmax(dim=-1)  # [B, r]
        keep = _cat([_prefix(B, P, dev), P + protected, P + b])  # [B, N - r]
        return TokenReduction(keep, P + a, P + (T - 2 * r) + dst_b, N)
    a, b = order[:, 0::2], order[:, 1::2]  # [B, Ta], [B, Tb]; Ta = ceil(T/2) ≥ r
    Ta = a.shape[1]
    sim_ab = gather_tokens(sim, a).gather(2, b.unsqueeze(1).expand(-1, Ta, -1))  # [B, Ta, Tb]
    ranked, dst_b = _strongest_edges(sim_ab, r)  # [B, Ta], [B, r]
    src_rank, unm_rank = ranked[:, :r], ranked[:, r:]  # [B, r], [B, Ta - r]
    keep = _cat([_prefix(B, P, dev), P + a.gather(1, unm_rank), P + b])  # [B, N - r]
    return TokenReduction(keep, P + a.gather(1, src_rank), P + (Ta - r) + dst_b, N)


def random_drop(
    batch: int, num_tokens: int, r: int, num_protected: int = 1, *, device=None, generator=None
) -> TokenReduction:
    """Control: drop ``r`` unprotected tokens uniformly at random (per image)."""
    P = num_protected
    T = num_tokens - P
    r = max(0, min(int(r), T - 1))
    noise = torch.rand(batch, T, device=device, generator=generator)  # [B, T]
    kept = noise.argsort(dim=-1)[:, : T - r].sort(dim=-1).values  # [B, T - r], spatial order
    return TokenReduction(_cat([_prefix(batch, P, device), P + kept]), None, None, num_tokens)


def _dilate_cross(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """4-neighbourhood dilation of a ``[B, T]`` 0/1 mask laid out on a ``grid`` (no wrap-around)."""
    B = mask.shape[0]
    h, w = grid
    m = mask.reshape(B, 1, h, w)  # [B, 1, h, w]
    p = F.pad(m, (1, 1, 1, 1))  # [B, 1, h + 2, w + 2]
    out = m + p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]
    return (out > 0).to(mask.dtype).reshape(B, h * w)  # [B, T]


def hiprune_select(
    object_score: torch.Tensor,
    deep_score: torch.Tensor,
    budget: int,
    grid: tuple[int, int],
    *,
    alpha: float = 0.1,
    num_protected: int = 1,
) -> TokenReduction:
    """HiPrune selection (Liu et al. 2025, §3): anchors, buffers, registers within a token ``budget``.

    ``object_score`` / ``deep_score`` ``[B, T]`` are per-patch attention scores from the object (middle)
    layer and the deep layer. Anchors: the ``round(α·budget/5)`` top object-layer tokens; buffers: their
    4 spatial neighbours on ``grid`` (so anchors + buffers ≈ α·budget); registers: the highest deep-layer
    tokens among the rest, filling the budget. The budget is fixed per image (batched shapes), so when
    buffers overlap more registers are taken. Kept patches stay in spatial order after the protected ones.
    """
    B, T = object_score.shape
    if grid[0] * grid[1] != T:
        raise ValueError(f"hiprune_select: grid {grid} does not hold {T} patch tokens")
    budget = max(1, min(int(budget), T))
    dev = object_score.device
    n_anchor = min(int(math.floor(budget * alpha / 5 + 0.5)), budget)
    chosen = object_score.new_zeros(B, T)
    if n_anchor > 0:
        anchors = object_score.topk(n_anchor, dim=-1).indices  # [B, n_anchor]
        chosen = chosen.scatter(1, anchors, torch.ones_like(anchors, dtype=chosen.dtype))
        chosen = _dilate_cross(chosen, grid)
    # chosen tokens first (ranked by object score), then the deep layer's best (registers)
    rank = chosen * (2.0 + object_score) + (1 - chosen) * deep_score.clamp(0, 1)  # [B, T]
    kept = rank.topk(budget, dim=-1).indices.sort(dim=-1).values  # [B, budget]
    return TokenReduction(_cat([_prefix(B, num_protected, dev), num_protected + kept]), None, None, T + num_protected)
