"""Collect per-block group saliency (heads, MLP neurons, whole blocks) from a ViT.

The math is in :mod:`vitkit.ops.pruning`; this file reads weights and gradients through the host adapter
(each block's Linear layers by role: ``qkv``, ``attn_out``, ``attn_gate``, ``mlp_in``, ``mlp_out``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..adapters import adapter_for
from ..adapters.runtime import block_modules
from ..errors import ConfigError, DataError
from ..ops import pruning as P

_log = logging.getLogger(__name__)


@dataclass
class BlockScores:
    """Raw (unnormalised) saliency of one block: ``heads`` ``[H]``, ``mlp`` ``[I]``, ``block`` scalar."""

    heads: torch.Tensor
    mlp: torch.Tensor
    block: float


def _group_sums(host, block: nn.Module, index: int, heads: tuple[int, int], elem) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``elem(param) -> tensor`` to each coupled weight/bias and sum per head and per neuron;
    ``heads``: (number of heads, head dim or None) of the block."""
    lin = host.block_linears(block, index=index)
    opt = lambda p: None if p is None else elem(p)  # noqa: E731
    qkv, gate, mlp_in = lin["qkv"], lin["attn_gate"], lin["mlp_in"]
    if heads[1] is None:  # head-major fused qkv (TinyViT, EfficientFormer): each head's [q | k | v] rows together
        head_sums = P.head_sums_head_major(elem(qkv.weight), elem(lin["attn_out"].weight), heads[0], opt(qkv.bias))
    else:
        if qkv is None:  # separate q/k/v projections: their rows stacked as a fused qkv's (a missing bias counts 0)
            parts = [lin["attn_q"], lin["attn_k"], lin["attn_v"]]
            qkv_t = torch.cat([elem(p.weight) for p in parts])
            biases = [torch.zeros(p.out_features) if p.bias is None else elem(p.bias) for p in parts]
            qkv_bias_t = None if all(p.bias is None for p in parts) else torch.cat(biases)
        else:
            qkv_t, qkv_bias_t = elem(qkv.weight), opt(qkv.bias)
        head_sums = P.head_sums(
            qkv_t,
            elem(lin["attn_out"].weight),
            heads[0],
            heads[1],
            qkv_bias_t=qkv_bias_t,
            gate_t=None if gate is None else elem(gate.weight),
            gate_bias_t=None if gate is None else opt(gate.bias),
        )
    neurons = P.neuron_sums(elem(mlp_in.weight), elem(lin["mlp_out"].weight), fc1_bias_t=opt(mlp_in.bias))
    gate_in = lin.get("mlp_gate")  # a split GLU's gate Linear: its rows belong to the same neurons
    if gate_in is not None:
        neurons = neurons + elem(gate_in.weight).sum(dim=1) + (0 if gate_in.bias is None else elem(gate_in.bias))
    return head_sums.double(), neurons.double()


def _heads(model: nn.Module) -> tuple[object, list[tuple[int, int]]]:
    """The host adapter and (number of heads, head dim) of every block; head dim None where the host's fused qkv is
    head-major (``head_major_qkv`` feature: :func:`~vitkit.ops.pruning.head_sums_head_major` scores its heads)."""
    host = adapter_for(model)
    info = host.describe(model)
    dims = [None] * info.depth if "head_major_qkv" in info.features else info.head_dim
    return host, list(zip(info.num_heads, dims, strict=True))


def _block_params(block: nn.Module) -> list[nn.Parameter]:
    return [p for p in block.parameters()]


def data_free_scores(model: nn.Module, importance: str) -> list[BlockScores]:
    """Magnitude (``l1``/``l2``) or DIMAP scores per block, no data needed."""
    out = []
    host, heads_of = _heads(model)
    with torch.no_grad():
        for i, blk in enumerate(block_modules(model)):
            if importance in ("l1", "l2"):
                p = 1 if importance == "l1" else 2
                elem = lambda w, p=p: P.magnitude(w.detach(), p)  # noqa: E731
            else:  # dimap: elementwise saliency normalised within each layer (module)
                elem = lambda w: P.dimap_saliency(w)  # noqa: E731
            heads, neurons = _group_sums(host, blk, i, heads_of[i], elem)
            block = float(sum(elem(p).double().sum() for p in _block_params(blk)))
            out.append(BlockScores(heads, neurons, block))
    return out


def calibration_batches(calib, model: nn.Module, n: int, batch_size: int, seed: int):
    """``[(x [b,C,H,W], y [b] | None), ...]`` from an image tensor, a dataset (labels used) or batches."""
    if calib is None:
        raise DataError(
            "data-driven pruning needs calibration images: pass calib=vitkit.data.calibration_set(ds, 32) "
            "(recipes do this) or use importance='l1', 'l2' or 'dimap'"
        )
    from ..data import iterate_batches

    if isinstance(calib, torch.Tensor):
        xs, ys = calib[:n], None
    elif isinstance(calib, Dataset):
        if len(calib) == 0:
            raise DataError("calibration dataset is empty")
        xs, ys = next(iterate_batches(calib, min(n, len(calib)), shuffle=True, seed=seed, limit=n))
    else:
        raise DataError(f"calib must be an image tensor [n,C,H,W] or a dataset, got {type(calib).__name__}")
    want = adapter_for(model).input_size(model)
    if xs.dim() != 4 or tuple(xs.shape[1:]) != want or xs.shape[0] == 0:
        raise DataError(
            f"calibration images have shape {tuple(xs.shape)} but the model takes [n, {', '.join(map(str, want))}]"
        )
    return [
        (xs[i : i + batch_size], None if ys is None else ys[i : i + batch_size])
        for i in range(0, xs.shape[0], batch_size)
    ]


def gradient_scores(model: nn.Module, importance: str, batches) -> list[BlockScores]:
    """First-order ``taylor`` (Σ|w·G|, G summed over all batches) or NViT ``hessian`` (Σ_b (Σ w·g_b)²).

    Loss: cross-entropy to the batch labels when given, else to the model's own argmax predictions.
    Gradients are cleared and ``requires_grad`` flags restored afterwards; the model is left in its mode.
    """
    if importance not in ("taylor", "hessian"):
        raise ConfigError(f"gradient_scores takes importance 'taylor' or 'hessian', got {importance!r}")
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    was_training = model.training
    host, heads_of = _heads(model)
    blocks = block_modules(model)
    acc = P.GroupSquareAccumulator()
    grad_sum: dict[int, torch.Tensor] = {}
    try:
        model.eval()
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        with torch.enable_grad():
            for x, y in batches:
                logits = model(x)
                if isinstance(logits, tuple):
                    logits = logits[0]
                target = logits.detach().argmax(-1) if y is None else y
                loss = F.cross_entropy(logits, target)
                if importance == "hessian":
                    for p in params:
                        p.grad = None
                # retain_graph: a host may reuse a tensor built in an earlier forward (timm's TinyViT /
                # EfficientFormer cache their attention biases in eval mode), whose graph a second backward walks
                loss.backward(retain_graph=True)
                if importance == "hessian":
                    for i, blk in enumerate(blocks):
                        heads, neurons = _group_sums(
                            host, blk, i, heads_of[i], lambda w: (w.detach() * w.grad).double()
                        )
                        acc.add(f"{i}.heads", heads)
                        acc.add(f"{i}.mlp", neurons)
                        acc.add(
                            f"{i}.block",
                            sum((p.detach() * p.grad).double().sum() for p in _block_params(blk)).reshape(1),
                        )
        out = []
        for i, blk in enumerate(blocks):
            if importance == "hessian":
                out.append(BlockScores(acc[f"{i}.heads"], acc[f"{i}.mlp"], float(acc[f"{i}.block"][0])))
            else:  # taylor: grads were summed over batches by not clearing them
                heads, neurons = _group_sums(host, blk, i, heads_of[i], lambda w: (w.detach() * w.grad).abs().double())
                block = float(sum((p.detach() * p.grad).abs().double().sum() for p in _block_params(blk)))
                out.append(BlockScores(heads, neurons, block))
        del grad_sum
        if importance == "hessian":
            _log.debug("hessian saliency accumulated over %d batches", acc.count.get("0.heads", 0))
    finally:
        for p, f in zip(params, flags, strict=True):
            p.grad = None
            p.requires_grad_(f)
        model.train(was_training)
    assert len(out) == len(blocks)
    return out
