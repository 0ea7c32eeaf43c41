"""Block reconstruction with average-perturbation-Hessian weighting, after APHQ-ViT (Wu et al., CVPR 2025).

For each transformer block in order, the quantizer scales inside the block (per-channel weight scales and the
uniform activation scales) are tuned so that the quantized block, fed the *quantized* model's block input,
reproduces the float block's output on the calibration images (QDrop/BRECQ-style reconstruction), with the
squared error weighted per element by an estimate of the task loss's curvature at the block output:

    L_i = mean( h ⊙ (Ŷ_i − Y_i)² ),   h = | ∇_O KL(p ‖ p(O + ε)) − ∇_O KL(p ‖ p(O − ε)) | / (2ε),

with ``p`` the float model's prediction, ``O`` the float block output and ``ε`` a uniform perturbation of all
elements (one ``ε`` per block: 1 % of the output's std). At ``O`` itself the gradient of the KL is zero (the
pitfall PTQ4ViT's Hessian metric falls into, hahnyuan/PTQ4ViT#23); the symmetric finite difference along the
all-ones perturbation gives ``|H·1|``, the Hessian row sums, which we then **average over the calibration
images** and normalise to mean 1 — our reading of "average perturbation Hessian".

Deliberate differences from the paper (only its abstract and table were available here): no AdaRound-style
rounding variables and no MLP reconstruction step — only the existing quantizers' scales are learnt, with a
straight-through round (LSQ) and Adam, for a small CPU iteration budget (``PTQConfig.reconstruct_iters``).
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..adapters import adapter_for
from .quantizer import UniformQuantizer

_log = logging.getLogger(__name__)


def _blocks(model: nn.Module) -> list[nn.Module]:
    return [block for _, block in adapter_for(model).blocks(model)]


def _block_io(model: nn.Module, x: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, output) of transformer block ``i`` for images ``x`` (one forward, stopped after block i)."""
    got: dict[str, torch.Tensor] = {}

    class _Stop(Exception):
        pass

    def hook(mod, args, out):
        got["in"], got["out"] = args[0].detach(), out.detach()
        raise _Stop

    h = _blocks(model)[i].register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    except _Stop:
        pass
    finally:
        h.remove()
    return got["in"], got["out"]


def aph_weights(fp_model: nn.Module, x: torch.Tensor, i: int, *, rel_eps: float = 1e-2) -> torch.Tensor:
    """Average-perturbation Hessian weights ``[1, N, D]`` (mean 1) for block ``i``'s output (module docstring)."""
    with torch.no_grad():
        p = F.softmax(fp_model(x), dim=-1)
        _, out = _block_io(fp_model, x, i)
    eps = float(out.std()) * rel_eps
    grads = []
    for sign in (1.0, -1.0):
        leaf: dict[str, torch.Tensor] = {}

        def hook(mod, args, o, sign=sign, leaf=leaf):
            leaf["o"] = o.detach().requires_grad_(True)
            return leaf["o"] + sign * eps

        h = _blocks(fp_model)[i].register_forward_hook(hook)
        try:
            with torch.enable_grad():
                logq = F.log_softmax(fp_model(x), dim=-1)
                loss = F.kl_div(logq, p, reduction="sum")
                (g,) = torch.autograd.grad(loss, leaf["o"])
        finally:
            h.remove()
        grads.append(g)
    hess = ((grads[0] - grads[1]).abs() / (2 * eps)).mean(0, keepdim=True)  # [1,N,D] averaged over images
    return hess / hess.mean().clamp_min(1e-30)


def _block_quantizers(block: nn.Module) -> list[UniformQuantizer]:
    return [m for m in block.modules() if isinstance(m, UniformQuantizer)]


def reconstruct_blocks_(
    model: nn.Module, fp_model: nn.Module, x: torch.Tensor, *, iters: int, lr: float = 1e-3
) -> list[dict]:
    """Tune the quantizer scales of each block of the calibrated ``model`` in place (``iters`` Adam steps per
    block, step size ``lr`` relative to each scale); ``fp_model``: the float model (same function). Returns per
    block ``{"block", "loss_before", "loss_after"}`` (APH-weighted MSE)."""
    out = []
    model.eval()
    fp_model.eval()
    for p in list(model.parameters()) + list(fp_model.parameters()):
        p.requires_grad_(False)
    fp_blocks = _blocks(fp_model)
    for i, block in enumerate(_blocks(model)):
        h = aph_weights(fp_model, x, i)
        x_q, _ = _block_io(model, x, i)
        x_fp, _ = _block_io(fp_model, x, i)
        with torch.no_grad():
            target = fp_blocks[i](x_fp)
        qs = _block_quantizers(block)
        groups = []
        for q in qs:
            q.ste = True
            q.scale.requires_grad_(True)
            groups.append({"params": [q.scale], "lr": lr * float(q.scale.detach().abs().mean())})
        opt = torch.optim.Adam(groups)
        first = last = float("nan")
        try:
            for step in range(iters + 1):
                with torch.enable_grad():
                    loss = (h * (block(x_q) - target).pow(2)).mean()
                if step == 0:
                    first = float(loss.detach())
                last = float(loss.detach())
                if step == iters:
                    break
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for q in qs:
                        q.scale.clamp_(min=1e-8)
        finally:
            for q in qs:
                q.ste = False
                q.scale.requires_grad_(False)
                q.scale.grad = None
        _log.info("block %d reconstruction: APH-MSE %.4g -> %.4g", i, first, last)
        out.append({"block": i, "loss_before": round(first, 6), "loss_after": round(last, 6)})
    return out
