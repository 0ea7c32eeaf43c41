"""Layer-wise least-squares reconstruction after structured pruning (``PruneConfig(reconstruct=True)``).

Removing heads or MLP neurons removes input columns of the block's output projections (the adapter's
``attn_out`` and ``mlp_out`` Linear layers). Channel pruning (He et al., ICCV 2017, eq. 1) refits those layers
so that, on calibration images, the pruned block reproduces what the dense block produced: block by block, in
forward order, the pruned model's own inputs to ``attn_out`` (then, after the refit, to ``mlp_out``) are
regressed onto the dense model's ``attn_out`` / ``mlp_out`` outputs (:func:`vitkit.ops.pruning.ridge_refit`).
Using the pruned model's inputs lets each refit also absorb the error of the blocks before it. No gradients;
a forward of the calibration images per refit.
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn as nn

from ..adapters import adapter_for
from ..adapters.runtime import block_modules
from ..ops.pruning import ridge_refit

_log = logging.getLogger(__name__)


class _Stop(Exception):
    """Raised by a capture hook once it has what it needs: the rest of the forward is not run."""


@torch.no_grad()
def _inputs(model: nn.Module, layer: nn.Module, batches: list[torch.Tensor]) -> torch.Tensor:
    """``[N, in]``: the rows ``layer`` receives over ``batches`` (forward stopped at ``layer``)."""
    rows: list[torch.Tensor] = []

    def grab(mod: nn.Module, args: tuple) -> None:
        rows.append(args[0].detach().reshape(-1, args[0].shape[-1]))
        raise _Stop

    h = layer.register_forward_pre_hook(grab)
    try:
        for x in batches:
            try:
                model(x)
            except _Stop:
                pass
    finally:
        h.remove()
    return torch.cat(rows)


@torch.no_grad()
def _dense_outputs(teacher: nn.Module, layers: list[nn.Module], batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """``[N, out]`` outputs of each of ``layers`` in the dense model, one full forward per batch."""
    rows: list[list[torch.Tensor]] = [[] for _ in layers]
    hooks = [
        layer.register_forward_hook(lambda m, a, out, k=k: rows[k].append(out.detach().reshape(-1, out.shape[-1])))
        for k, layer in enumerate(layers)
    ]
    try:
        for x in batches:
            teacher(x)
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat(r) for r in rows]


def _set(layer: nn.Linear, w: torch.Tensor, b: torch.Tensor) -> None:
    layer.weight.copy_(w)
    if layer.bias is None:
        layer.bias = nn.Parameter(b.clone())
    else:
        layer.bias.copy_(b)


@torch.no_grad()
def reconstruct_outputs_(
    model: nn.Module,
    teacher: nn.Module,
    images: torch.Tensor,
    *,
    kept_blocks: list[int],
    pruned: set[int],
    batch_size: int = 25,
    damp: float = 0.01,
) -> dict[str, float]:
    """Refit the ``attn_out`` and ``mlp_out`` Linear layers of the pruned blocks (``pruned``: indices in
    ``model``) of ``model`` to the dense ``teacher`` on ``images``; ``kept_blocks[j]`` is the teacher block of
    model block ``j``. Returns ``{layer name: relative output error after the refit}``."""
    was = model.training, teacher.training
    model.eval(), teacher.eval()
    batches = list(images.split(batch_size))
    t0 = time.perf_counter()
    host = adapter_for(model)
    dense_blocks, blocks = block_modules(teacher), block_modules(model)
    roles = ("attn_out", "mlp_out")
    targets = {}
    for j in sorted(pruned):
        lin = host.block_linears(dense_blocks[kept_blocks[j]], index=kept_blocks[j])
        targets[j] = tuple(lin[r] for r in roles)
    flat = [m for pair in targets.values() for m in pair]
    outs = dict(zip(flat, _dense_outputs(teacher, flat, batches), strict=True))
    names = {m: name for name, m in model.named_modules()}
    errors = {}
    for j in sorted(pruned):
        lin = host.block_linears(blocks[j], index=j)
        for role, dense in zip(roles, targets[j], strict=True):
            layer = lin[role]
            x, y = _inputs(model, layer, batches), outs[dense]
            w, b = ridge_refit(x, y, damp=damp)
            _set(layer, w, b)
            errors[names[layer]] = float((x @ w.T + b - y).norm() / y.norm().clamp_min(1e-12))
    model.train(was[0]), teacher.train(was[1])
    _log.info("least-squares reconstruction of %d layers in %.1f s", len(errors), time.perf_counter() - t0)
    return errors
