"""``target="latency"``: per-unit costs measured on *this* CPU instead of counted MACs.

For every distinct block geometry the attention and the MLP of a copy of the block are timed (interleaved
medians, ``inference_mode``) at their full size and at a reduced size (1 head; half the hidden neurons); the
difference, divided by the units removed, is the measured seconds per head and per neuron, and the rest of
the block (norms, residual adds, LayerScale) is a fixed per-block cost. The whole model is timed once for the
total the ratio refers to. The planners then price units with these costs (linear model of latency in the
number of heads/neurons — on CPU it follows the GEMM sizes closely, see the implementation notes §2.1).

Caveats (documented, not hidden): the costs hold for this machine, thread count and ``batch_size``; on a
busy CPU they are noisy; where the full-vs-reduced difference is not positive (overhead-bound tiny layers)
the part's time divided by its units is used instead (``estimate="average"``, recorded in the decisions), which
over-states the saving; the measured latency after pruning is recorded next to the estimate.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..adapters import adapter_for
from ..adapters.runtime import block_modules
from ..bench.timing import interleaved_times


@dataclass(frozen=True)
class LatencyCosts:
    """Measured seconds per image: one head, one MLP neuron, the rest of the block."""

    head: float
    neuron: float
    fixed: float
    #: ``marginal`` (time difference full vs reduced) or ``average`` (the part's time / its units, used when
    #: the difference is not measurable: overhead-bound tiny layers or a noisy CPU)
    estimate: str = "marginal"


def _median_pair(full: nn.Module, small: nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    t = interleaved_times([full, small], x, repeats=repeats, warmup=1, min_time=0.002)
    return statistics.median(t[0]), statistics.median(t[1])


def measure_block_costs(model: nn.Module, *, batch_size: int = 1, repeats: int = 5) -> list[LatencyCosts]:
    """Per-block :class:`LatencyCosts` (seconds per image), measured once per distinct geometry."""
    host = adapter_for(model)
    info = host.describe(model)
    out: list[LatencyCosts] = []
    seen: dict[tuple, LatencyCosts] = {}
    for i, blk in enumerate(block_modules(model)):
        h, head_dim, hidden = info.num_heads[i], info.head_dim[i], info.mlp_hidden[i]
        shape = host.block_input_shape(model, i)  # one image's tokens entering the block, e.g. [N, D]
        key = (shape, h, head_dim, hidden)
        if key in seen:
            out.append(seen[key])
            continue
        x = torch.randn(batch_size, *shape)
        b = copy.deepcopy(blk).eval()
        a_full, m_full = host.residual_branches(b, index=i)  # norm → attention, norm → MLP
        a_small_blk = copy.deepcopy(b)
        if h > 1:
            host.prune_heads(a_small_blk, [0], index=i)
        a_small = host.residual_branches(a_small_blk, index=i)[0]
        t_af, t_as = _median_pair(a_full, a_small, x, repeats)
        per_head = (t_af - t_as) / (h - 1) if h > 1 else t_af
        m_small_blk = copy.deepcopy(b)
        half = max(hidden // 2, 1)
        host.prune_mlp(m_small_blk, range(half), index=i)
        t_mf, t_ms = _median_pair(m_full, host.residual_branches(m_small_blk, index=i)[1], x, repeats)
        per_neuron = (t_mf - t_ms) / max(hidden - half, 1)
        estimate = "marginal"
        if per_head <= 0 or per_neuron <= 0:  # not measurable at this size: fall back to average shares
            per_head, per_neuron, estimate = t_af / h, t_mf / hidden, "average"
        t_block = statistics.median(interleaved_times([b], x, repeats=repeats, warmup=1, min_time=0.002)[0])
        fixed = max(t_block - h * per_head - hidden * per_neuron, 0.0)
        c = LatencyCosts(per_head / batch_size, per_neuron / batch_size, fixed / batch_size, estimate)
        seen[key] = c
        out.append(c)
    return out


def measure_model(model: nn.Module, *, batch_size: int = 1, repeats: int = 5) -> float:
    """Median seconds per image of one whole forward at ``batch_size``."""
    was = model.training
    model.eval()
    try:
        x = torch.randn(batch_size, *adapter_for(model).input_size(model))
        return statistics.median(interleaved_times([model], x, repeats=repeats, warmup=1, min_time=0.002)[0]) / (
            batch_size
        )
    finally:
        model.train(was)
