"""PLeaS for two timm ViTs, possibly fine-tuned from *different* bases (Nasery et al., CVPR 2025).

1. **Permutations** (PLeaS §3.1, Git Re-Basin activation matching): run both models on ``calib`` images; one
   permutation of the residual stream (all block outputs pooled) and one per block for the MLP hidden units,
   each by the Hungarian method on activation correlations (:func:`vitkit.ops.merging.match_permutation`).
   Model 2 is permuted exactly (its function is unchanged: LayerNorm is permutation-equivariant).
2. **Merge** θ = w·θ_1 + (1 − w)·π(θ_2).
3. **Least squares** (§3.2): every block ``nn.Linear`` of the merged model is refit in closed form so that, on the
   stacked (permuted) inputs of both models, it outputs the mean of both models' (permuted) outputs. PLeaS uses
   ~400 Adam steps on the same objective; the normal equations give its minimiser.

Deliberate differences: attention heads are not permuted (q/k/v head alignment needs a per-head matching
PLeaS' compiler does not provide for ViTs either); same width only — the paper's *partial* merging to a wider
budget (n_merged + 2·n_separate units) is not implemented. Models must share the architecture (same shapes),
not the base: this is the one method that accepts different bases.
"""

from __future__ import annotations

import logging
import re

import torch
import torch.nn as nn

from ..errors import ConfigError, UnsupportedModelError
from ..ops import merging as ops
from .configs import PLeaSConfig
from .core import MergeContext, register_merge
from .data_methods import load_into, materialize
from .sources import check_compatible

_log = logging.getLogger(__name__)

RES = "res"
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
#: tensor-name suffix inside a block → [(axis, permutation)]; "h" = that block's MLP hidden permutation.
_BLOCK_RULES: dict[str, list[tuple[int, str]]] = {
    "norm1.weight": [(0, RES)],
    "norm1.bias": [(0, RES)],
    "norm2.weight": [(0, RES)],
    "norm2.bias": [(0, RES)],
    "ls1.gamma": [(0, RES)],
    "ls2.gamma": [(0, RES)],
    "attn.qkv.weight": [(1, RES)],
    "attn.qkv.bias": [],
    "attn.q_norm.weight": [],
    "attn.q_norm.bias": [],
    "attn.k_norm.weight": [],
    "attn.k_norm.bias": [],
    "attn.proj.weight": [(0, RES)],
    "attn.proj.bias": [(0, RES)],
    "mlp.fc1.weight": [(0, "h"), (1, RES)],
    "mlp.fc1.bias": [(0, "h")],
    "mlp.fc2.weight": [(0, RES), (1, "h")],
    "mlp.fc2.bias": [(0, RES)],
}
_TOP_RULES: dict[str, list[tuple[int, str]]] = {
    "cls_token": [(-1, RES)],
    "reg_token": [(-1, RES)],
    "dist_token": [(-1, RES)],
    "pos_embed": [(-1, RES)],
    "patch_embed.proj.weight": [(0, RES)],
    "patch_embed.proj.bias": [(0, RES)],
    "norm.weight": [(0, RES)],
    "norm.bias": [(0, RES)],
    "fc_norm.weight": [(0, RES)],
    "fc_norm.bias": [(0, RES)],
    "head.weight": [(1, RES)],
    "head.bias": [],
    "head_dist.weight": [(1, RES)],
    "head_dist.bias": [],
}
#: block linear → (input permutation, output permutation) for the least-squares refit.
_LINEAR_PERMS = {"attn.qkv": (RES, None), "attn.proj": (None, RES), "mlp.fc1": (RES, "h"), "mlp.fc2": ("h", RES)}


def _rules(key: str) -> tuple[list[tuple[int, str]], int | None]:
    m = _BLOCK.match(key)
    if m:
        rule = _BLOCK_RULES.get(m.group(2))
        block = int(m.group(1))
    else:
        rule, block = _TOP_RULES.get(key), None
    if rule is None:
        raise UnsupportedModelError(
            f"PLeaS does not know how to permute tensor {key!r}: it supports plain timm VisionTransformer "
            "blocks (norm1/attn/ls/norm2/mlp); use another merge method for this model"
        )
    return rule, block


def permute_state_dict(
    sd: dict[str, torch.Tensor], res: torch.Tensor, hidden: list[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Apply the residual permutation ``res`` [D] and per-block hidden permutations to a timm ViT state dict."""
    out = {}
    for k, v in sd.items():
        rule, block = _rules(k)
        t = v
        for axis, which in rule:
            perm = res if which == RES else hidden[block]
            t = t.index_select(axis if axis >= 0 else t.ndim + axis, perm)
        out[k] = t.clone() if t is v else t
    return out


def _capture(model: nn.Module, x: torch.Tensor, depth: int, batch: int = 256):
    """Block outputs [B·N, D] per block, and each block linear's (input, output) pair, flattened over tokens."""
    feats: dict[str, torch.Tensor] = {}
    hooks = []

    def keep(name):
        def fn(mod, inp, out):
            y = out.detach()
            feats.setdefault(f"{name}.out", []).append(y.reshape(-1, y.shape[-1]))
            if isinstance(mod, nn.Linear):
                xi = inp[0].detach()
                feats.setdefault(f"{name}.in", []).append(xi.reshape(-1, xi.shape[-1]))

        return fn

    for i in range(depth):
        blk = model.blocks[i]
        hooks.append(blk.register_forward_hook(keep(f"blocks.{i}")))
        for lin in _LINEAR_PERMS:
            hooks.append(blk.get_submodule(lin).register_forward_hook(keep(f"blocks.{i}.{lin}")))
    with torch.inference_mode():
        for j in range(0, x.shape[0], batch):
            model(x[j : j + batch])
    for h in hooks:
        h.remove()
    return {k: torch.cat(v) for k, v in feats.items()}


@register_merge(
    "pleas",
    PLeaSConfig,
    paper="PLeaS: Merging Models with Permutations and Least Squares (CVPR 2025)",
    needs_base=False,
    needs=("calib",),
)
def merge_pleas(sources, base, cfg: PLeaSConfig, ctx: MergeContext):
    if len(sources) != 2:
        raise ConfigError(f"PLeaS merges exactly 2 models, got {len(sources)}: merge pairs, or use another method")
    if not isinstance(ctx.calib, torch.Tensor):
        raise ConfigError("PLeaS needs calib= as one tensor of unlabeled input images [N, C, H, W]")
    keys = check_compatible(sources, None)
    tmpl_a = ctx.template("pleas")
    blocks = getattr(tmpl_a, "blocks", None)
    if blocks is None:
        raise UnsupportedModelError("PLeaS supports timm VisionTransformer models (with .blocks)")
    depth = len(blocks)
    import copy

    tmpl_b = copy.deepcopy(tmpl_a)
    sd_a, sd_b = materialize(sources[0], keys), materialize(sources[1], keys)
    load_into(tmpl_a, sd_a, source=sources[0].label)
    load_into(tmpl_b, sd_b, source=sources[1].label)
    fa, fb = _capture(tmpl_a, ctx.calib, depth), _capture(tmpl_b, ctx.calib, depth)
    res = ops.match_permutation(
        torch.cat([fa[f"blocks.{i}.out"] for i in range(depth)]),
        torch.cat([fb[f"blocks.{i}.out"] for i in range(depth)]),
    )
    hidden = [ops.match_permutation(fa[f"blocks.{i}.mlp.fc2.in"], fb[f"blocks.{i}.mlp.fc2.in"]) for i in range(depth)]
    sd_bp = permute_state_dict(sd_b, res, hidden)
    w = cfg.weight
    out = {k: w * sd_a[k] + (1 - w) * sd_bp[k] if sd_a[k].is_floating_point() else sd_a[k] for k in keys}
    if cfg.refit:
        for i in range(depth):
            for lin, (pin, pout) in _LINEAR_PERMS.items():
                name = f"blocks.{i}.{lin}"
                xa, ya, xb, yb = fa[f"{name}.in"], fa[f"{name}.out"], fb[f"{name}.in"], fb[f"{name}.out"]
                if pin is not None:
                    xb = xb[:, res if pin == RES else hidden[i]]
                if pout is not None:
                    yb = yb[:, res if pout == RES else hidden[i]]
                target = w * ya + (1 - w) * yb  # [S, out]
                has_bias = f"{name}.bias" in out
                wt, b = ops.least_squares_fit(
                    torch.cat([xa, xb]), torch.cat([target, target]), ridge=cfg.ridge, bias=has_bias
                )
                out[f"{name}.weight"] = wt
                if has_bias:
                    out[f"{name}.bias"] = b
            if ctx.progress:
                ctx.progress(i + 1, depth, f"block {i}")
    ctx.info["residual_permutation_identity"] = bool((res == torch.arange(res.numel())).all())
    return {k: v.to(sources[0].dtype(k)) for k, v in out.items()}
