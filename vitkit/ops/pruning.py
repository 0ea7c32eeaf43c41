"""Structured-pruning math: group saliency for heads / MLP neurons / blocks, normalisation and allocation.

Pure tensor / list code (no ``nn.Module``, no timm). The adapter-side surgery that applies a plan lives in
``vitkit/adapters/timm_vit_surgery.py``; the glue in ``vitkit/prune/``.

Layouts (timm ``Attention``/``Mlp``, torch ``Linear`` convention ``y = x Wᵀ + b``):

* ``qkv.weight`` ``[3·H·d, C]``: row ``t·H·d + h·d + j`` (t ∈ {q, k, v}, head h, channel j);
* ``proj.weight`` ``[C, H·d]``: column ``h·d + j``;
* ``fc1.weight`` ``[I, C]`` row i, ``fc2.weight`` ``[C, I]`` column i, for hidden neuron i.

A *group* is the coupled parameter set removed together: a head = its 3·d qkv rows (+ biases, + the d rows
of a gate Linear) and d proj columns; a neuron = one fc1 row (+ bias) and one fc2 column.

Criteria (``t`` below is an elementwise tensor the same shape as a weight, e.g. ``|w|`` or ``w·g``):

* magnitude (Torch-Pruning ``GroupMagnitudeImportance``): ``Σ_{i∈s} |w_i|^p``, p ∈ {1, 2};
* first-order Taylor (Molchanov et al., CVPR 2019, Eq. 3 summed over the group as in Torch-Pruning's
  ``GroupTaylorImportance``): ``Σ_{i∈s} |w_i · G_i|`` with ``G`` the gradient summed over every calibration
  batch;
* NViT Hessian-aware (Yang et al., CVPR 2023, Eq. 6–8: the second-order term with a Fisher approximation of
  the Hessian reduces to the squared group sum of weight × gradient): per batch ``c_s = (Σ_{i∈s} w_i g_i)²``,
  *accumulated over every batch* (:class:`GroupSquareAccumulator`), unlike Torch-Pruning 1.6.1 which keeps
  only the last sample;
* DIMAP data-free (He & Zhou, 2023, Eq. 9): per layer, weights sorted by magnitude descending,
  ``Imp(w_p) = w_p² / Σ_{i≤p} w_i²``. DIMAP thresholds these per element (unstructured); we deliberately sum
  them over each structural group so that the result is a shape change (CPU speed), see :func:`dimap_saliency`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

IMPORTANCES = ("l1", "l2", "taylor", "hessian", "dimap")
DATA_FREE = ("l1", "l2", "dimap")
NORMALIZERS = ("mean", "max", "sum", "none")


# -- per-group sums ----------------------------------------------------------------------------------------
def head_sums(
    qkv_t: torch.Tensor,
    proj_t: torch.Tensor,
    num_heads: int,
    head_dim: int,
    qkv_bias_t: torch.Tensor | None = None,
    gate_t: torch.Tensor | None = None,
    gate_bias_t: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum an elementwise tensor over each head's coupled parameters → ``[H]``.

    ``qkv_t`` ``[3·H·d, C]``, ``proj_t`` ``[C, H·d]``, ``qkv_bias_t`` ``[3·H·d]``, ``gate_t`` ``[H·d, C]``.
    """
    h, d = num_heads, head_dim
    c = qkv_t.shape[1]
    out = qkv_t.reshape(3, h, d, c).sum(dim=(0, 2, 3))  # [3, H, d, C] → [H]
    out = out + proj_t.reshape(proj_t.shape[0], h, d).sum(dim=(0, 2))  # [C, H, d] → [H]
    if qkv_bias_t is not None:
        out = out + qkv_bias_t.reshape(3, h, d).sum(dim=(0, 2))
    if gate_t is not None:
        out = out + gate_t.reshape(h, d, c).sum(dim=(1, 2))
    if gate_bias_t is not None:
        out = out + gate_bias_t.reshape(h, d).sum(dim=1)
    return out


def head_sums_head_major(
    qkv_t: torch.Tensor, proj_t: torch.Tensor, num_heads: int, qkv_bias_t: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`head_sums` for a head-major fused qkv (LeViT-style attention, TinyViT / EfficientFormer): ``qkv_t``
    ``[H·(2·d + v), C]`` holds each head's ``[q | k | v]`` rows together, ``proj_t`` ``[C, H·v]`` → ``[H]``."""
    h, c = num_heads, qkv_t.shape[1]
    out = qkv_t.reshape(h, -1, c).sum(dim=(1, 2))  # [H, 2d+v, C] → [H]
    out = out + proj_t.reshape(proj_t.shape[0], h, -1).sum(dim=(0, 2))  # [C, H, v] → [H]
    if qkv_bias_t is not None:
        out = out + qkv_bias_t.reshape(h, -1).sum(dim=1)
    return out


def neuron_sums(fc1_t: torch.Tensor, fc2_t: torch.Tensor, fc1_bias_t: torch.Tensor | None = None) -> torch.Tensor:
    """Sum an elementwise tensor over each MLP hidden neuron: fc1 row (+ bias) and fc2 column → ``[I]``. An fc1 with
    ``k·I`` rows stacks ``k`` rows per neuron (a packed GLU's gate and value rows, Shazeer 2020 Eq. 6): all count."""
    if fc1_t.shape[0] != fc2_t.shape[1]:  # stacked rows: fold them onto their neuron first
        rows = fc1_t.sum(dim=1) if fc1_bias_t is None else fc1_t.sum(dim=1) + fc1_bias_t  # [k·I]
        return rows.reshape(-1, fc2_t.shape[1]).sum(dim=0) + fc2_t.sum(dim=0)  # [k, I] → [I];  [C, I] → [I]
    out = fc1_t.sum(dim=1) + fc2_t.sum(dim=0)  # [I, C] → [I];  [C, I] → [I]
    if fc1_bias_t is not None:
        out = out + fc1_bias_t
    return out


def magnitude(w: torch.Tensor, p: int) -> torch.Tensor:
    """Elementwise ``|w|^p`` (p = 1 or 2) for group magnitude saliency."""
    if p not in (1, 2):
        raise ValueError(f"magnitude saliency takes p=1 or p=2, got {p}")
    return w.abs() if p == 1 else w.square()


def dimap_saliency(w: torch.Tensor) -> torch.Tensor:
    """DIMAP module-wise weight saliency (He & Zhou 2023, Eq. 9), elementwise, same shape as ``w``.

    Weights of one layer sorted by magnitude descending ``|w_1| ≥ |w_2| ≥ ...``;
    ``Imp(w_p) = w_p² / Σ_{i ≤ p} w_i²`` — the share of the layer's "retained energy" that ``w_p`` would add,
    which makes layers with different scales comparable without data. Ties share the cumulative sum of
    their sorted position (a measure-zero detail for float weights).
    """
    flat = w.detach().reshape(-1).float()
    sq = flat.square()
    order = torch.argsort(sq, descending=True)
    cum = torch.cumsum(sq[order], dim=0).clamp_min(torch.finfo(torch.float32).tiny)
    imp = torch.empty_like(sq)
    imp[order] = sq[order] / cum
    return imp.reshape(w.shape)


class GroupSquareAccumulator:
    """NViT's per-batch ``(Σ_{i∈s} w_i g_i)²`` summed over batches, one vector per named group.

    ``add(name, group_sums)`` must be called once per batch with that batch's ``Σ w·g`` per group; the
    accumulated score is ``Σ_batches (Σ_{i∈s} w_i g_i)²`` (every batch counts; ``count`` records how many).
    """

    def __init__(self) -> None:
        self.scores: dict[str, torch.Tensor] = {}
        self.count: dict[str, int] = {}

    def add(self, name: str, group_sums: torch.Tensor) -> None:
        sq = group_sums.detach().double().square()
        self.scores[name] = self.scores[name] + sq if name in self.scores else sq
        self.count[name] = self.count.get(name, 0) + 1

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.scores[name]


def normalize(scores: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """Scale one layer-group's scores so that groups of different layers/kinds are comparable.

    ``mean`` (Torch-Pruning's default), ``max``, ``sum`` or ``none``. Zero denominators leave scores as is.
    """
    if how == "none":
        return scores
    if how not in NORMALIZERS:
        raise ValueError(f"unknown normalisation {how!r}; valid: {NORMALIZERS}")
    denom = {"mean": scores.mean, "max": scores.max, "sum": scores.sum}[how]()
    return scores / denom if float(denom) > 0 else scores


# -- index maps ----------------------------------------------------------------------------------------------
def qkv_rows(num_heads: int, head_dim: int, keep: Sequence[int]) -> torch.Tensor:
    """Row indices of ``qkv.weight`` ``[3·H·d, C]`` for the kept heads, q block then k then v."""
    keep_t = torch.as_tensor(list(keep), dtype=torch.long)
    j = torch.arange(head_dim)
    per_t = (keep_t[:, None] * head_dim + j[None, :]).reshape(-1)  # [K·d] offsets inside one of q/k/v
    return torch.cat([t * num_heads * head_dim + per_t for t in range(3)])  # [3·K·d]


def head_cols(head_dim: int, keep: Sequence[int]) -> torch.Tensor:
    """Column indices of ``proj.weight`` ``[C, H·d]`` (and rows of a gate Linear) for the kept heads."""
    keep_t = torch.as_tensor(list(keep), dtype=torch.long)
    return (keep_t[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)  # [K·d]


def head_dim_rows(num_heads: int, head_dim: int, keep_dims: Sequence[int]) -> torch.Tensor:
    """Row indices of ``qkv.weight`` ``[3·H·d, C]`` keeping dims ``keep_dims`` (same set) in every head."""
    j = torch.as_tensor(list(keep_dims), dtype=torch.long)
    per_t = (torch.arange(num_heads)[:, None] * head_dim + j[None, :]).reshape(-1)  # [H·d′]
    return torch.cat([t * num_heads * head_dim + per_t for t in range(3)])  # [3·H·d′]


def head_dim_cols(num_heads: int, head_dim: int, keep_dims: Sequence[int]) -> torch.Tensor:
    """Column indices of ``proj.weight`` ``[C, H·d]`` keeping dims ``keep_dims`` in every head → ``[H·d′]``."""
    j = torch.as_tensor(list(keep_dims), dtype=torch.long)
    return (torch.arange(num_heads)[:, None] * head_dim + j[None, :]).reshape(-1)


# -- costs -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockGeometry:
    """Sizes of one block needed to price its units: embed ``dim``, ``num_heads`` × ``head_dim``, ``hidden``."""

    dim: int
    num_heads: int
    head_dim: int
    hidden: int
    tokens: int
    qkv_bias: bool = True
    fc1_bias: bool = True
    gated: bool = False
    #: ``(seconds per head, per neuron, fixed per block)`` measured on this CPU, for ``target="latency"``
    latency: tuple[float, float, float] | None = None
    #: keys each query attends to (windowed attention: the window area); None = every token (global attention)
    span: int | None = None
    #: value width per head when it differs from the key width ``head_dim`` (EfficientFormer: 4·d); None = ``head_dim``
    val_dim: int | None = None


def _latency(g: BlockGeometry) -> tuple[float, float, float]:
    if g.latency is None:
        raise ValueError("target 'latency' needs measured per-unit costs in BlockGeometry.latency")
    return g.latency


def head_cost(g: BlockGeometry, target: str) -> float:
    """Params or MACs per image of one head: qkv rows + proj cols (+ gate); MACs add QKᵀ and AV (2·N·S·d, with
    S = N keys per query under global attention, the window area under windowed attention)."""
    if target == "latency":
        return _latency(g)[0]
    d, c, n = g.head_dim, g.dim, g.tokens
    v = d if g.val_dim is None else g.val_dim  # q, k rows of width d; v rows and proj columns of width v
    lin = (2 * d + 2 * v) * c + (d * c if g.gated else 0)
    if target == "params":
        return lin + (2 * d + v if g.qkv_bias else 0) + (d if g.gated and g.qkv_bias else 0)
    return n * lin + n * (n if g.span is None else g.span) * (d + v)


def neuron_cost(g: BlockGeometry, target: str) -> float:
    """Params or MACs per image of one MLP hidden neuron (fc1 row + fc2 column); or its measured seconds."""
    if target == "latency":
        return _latency(g)[1]
    if target == "params":
        return 2 * g.dim + (1 if g.fc1_bias else 0)
    return g.tokens * 2 * g.dim


def block_cost(g: BlockGeometry, target: str, *, heads: int | None = None, hidden: int | None = None) -> float:
    """Cost of a whole block at its current (possibly reduced) sizes; params include norms and output biases."""
    heads = g.num_heads if heads is None else heads
    hidden = g.hidden if hidden is None else hidden
    cost = heads * head_cost(g, target) + hidden * neuron_cost(g, target)
    if target == "params":
        cost += 4 * g.dim + 2 * g.dim  # two LayerNorms (weight + bias) + proj/fc2 biases
    elif target == "latency":
        cost += _latency(g)[2]  # norms, residual adds: measured remainder of the block
    return cost


# -- allocation ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Unit:
    """One removable unit: ``kind`` in {"head", "mlp", "block"}, in ``block`` at ``index``, with a score."""

    kind: str
    block: int
    index: int
    score: float


@dataclass
class Plan:
    """Which units go: per block the removed head / neuron indices, and the removed blocks."""

    heads: dict[int, list[int]]
    mlp: dict[int, list[int]]
    removed_blocks: list[int]
    removed_cost: float


def plan_global(
    units: Sequence[Unit],
    geoms: Sequence[BlockGeometry],
    target: str,
    budget: float,
    *,
    min_heads: int = 1,
    min_hidden: int = 1,
    round_to: int = 1,
) -> Plan:
    """Global ranking (NViT §3.3): remove the globally lowest normalised scores until ``budget`` cost is gone.

    ``min_heads`` / ``min_hidden`` are never crossed (a unit that would cross them is skipped: a block loses
    all its heads only through a "block" unit). ``round_to`` rounds each block's removed neurons down to a
    multiple (hardware-friendly sizes); budget accounting uses the rounded counts.
    """
    heads: dict[int, list[int]] = {}
    mlp: dict[int, list[int]] = {}
    dead: list[int] = []
    removed = 0.0

    def block_now(b: int) -> float:
        return block_cost(
            geoms[b],
            target,
            heads=geoms[b].num_heads - len(heads.get(b, [])),
            hidden=geoms[b].hidden - len(mlp.get(b, [])),
        )

    for u in sorted(units, key=lambda u: (u.score, u.kind, u.block, u.index)):
        if removed >= budget:
            break
        if u.block in dead:
            continue
        g = geoms[u.block]
        if u.kind == "head":
            if g.num_heads - len(heads.get(u.block, [])) <= min_heads:
                continue
            heads.setdefault(u.block, []).append(u.index)
            removed += head_cost(g, target)
        elif u.kind == "mlp":
            if g.hidden - len(mlp.get(u.block, [])) <= min_hidden:
                continue
            mlp.setdefault(u.block, []).append(u.index)
            removed += neuron_cost(g, target)
        elif u.kind == "block":
            if len(dead) + 1 >= len(geoms):
                continue  # keep at least one block
            removed += block_now(u.block)
            dead.append(u.block)
            heads.pop(u.block, None)
            mlp.pop(u.block, None)
        else:
            raise ValueError(f"unknown unit kind {u.kind!r}")
    if round_to > 1:
        for b, idx in list(mlp.items()):
            keep_n = len(idx) - len(idx) % round_to
            removed -= (len(idx) - keep_n) * neuron_cost(geoms[b], target)
            mlp[b] = idx[:keep_n]
    return Plan(
        {b: sorted(v) for b, v in heads.items() if v},
        {b: sorted(v) for b, v in mlp.items() if v},
        sorted(dead),
        removed,
    )


def uniform_counts(
    geoms: Sequence[BlockGeometry], target: str, budget: float, groups: Sequence[str], *, round_to: int = 1
) -> tuple[float, list[int], list[int]]:
    """Uniform per-layer allocation: one fraction ``r`` of every selected group in every block.

    Returns ``(r, heads_removed_per_block, neurons_removed_per_block)`` with the smallest ``r`` (found by
    bisection on the rounded counts) whose removed cost reaches ``budget``.
    """

    def counts(r: float) -> tuple[list[int], list[int], float]:
        hs = [math.floor(r * g.num_heads + 0.5) if "heads" in groups else 0 for g in geoms]
        ms = []
        for g in geoms:
            m = math.floor(r * g.hidden + 0.5) if "mlp" in groups else 0
            ms.append(m - m % round_to if round_to > 1 else m)
        cost = sum(h * head_cost(g, target) + m * neuron_cost(g, target) for g, h, m in zip(geoms, hs, ms, strict=True))
        return hs, ms, cost

    lo, hi = 0.0, 1.0
    if counts(hi)[2] < budget:
        hs, ms, _ = counts(hi)
        return hi, hs, ms
    for _ in range(50):
        mid = (lo + hi) / 2
        if counts(mid)[2] >= budget:
            hi = mid
        else:
            lo = mid
    hs, ms, _ = counts(hi)
    return hi, hs, ms


def lowest(scores: torch.Tensor, n: int) -> list[int]:
    """Indices of the ``n`` lowest scores (ties broken by index), sorted ascending."""
    if n <= 0:
        return []
    order = sorted(range(scores.numel()), key=lambda i: (float(scores[i]), i))
    return sorted(order[:n])


def ridge_refit(x: torch.Tensor, y: torch.Tensor, *, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares refit of a linear layer after its inputs were pruned: ``(W [out, in], b [out])`` minimising
    ``‖x Wᵀ + b − y‖² + λ‖W‖²`` over calibration rows (``x``: ``[N, in]`` pruned layer inputs, ``y``: ``[N, out]``
    the dense layer's outputs), λ = ``damp`` × mean diag of the centred Gram matrix — the layer-wise
    reconstruction of channel pruning (He et al., ICCV 2017, eq. 1, with the weights solved in closed form;
    the damping as in SparseGPT's Hessian). Solved in float64 by Cholesky."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x [N, in] and y [N, out] must share N, got {tuple(x.shape)} and {tuple(y.shape)}")
    xd, yd = x.double(), y.double()
    mx, my = xd.mean(0), yd.mean(0)  # [in], [out]
    xc, yc = xd - mx, yd - my  # centred: the bias absorbs the means
    gram = xc.T @ xc  # [in, in]
    lam = damp * gram.diagonal().mean().clamp_min(1e-12)
    gram.diagonal().add_(lam)
    w = torch.cholesky_solve(xc.T @ yc, torch.linalg.cholesky(gram)).T  # [out, in]
    b = my - w @ mx  # [out]
    return w.to(x.dtype), b.to(x.dtype)
