"""PLeaS for N ≥ 2 timm ViTs of one architecture, possibly trained from *different* bases (Nasery et al., CVPR 2025).

1. **Permutation matching** (PLeaS §3.1, activation matching as in Git Re-Basin): every model runs on the same
   unlabeled ``calib`` images; model t ≥ 1 is aligned onto model 0 (the anchor) with the Hungarian method on
   activation correlations: one permutation of the residual stream (all block outputs pooled), per block one
   permutation of the attention **heads as units** (score of a head pair = best within-head matching of its
   q/k dims + best within-head matching of its v dims), the within-head permutations themselves (q and k share
   one so that q·k is unchanged; v has its own, carried into ``attn.proj``'s columns), and one permutation of
   the MLP hidden neurons. Permuting a model this way leaves its function unchanged (LayerNorm is
   permutation-equivariant), which the tests check.
2. **Width** (PLeaS' partial matching): matched hidden neurons form *groups* (one unit per model). At the
   model's own width every group is one merged unit (weighted mean of its members). ``mlp_width`` > width
   splits the least-correlated groups into separate per-model units (up to N·width), as PLeaS keeps its
   worst-matched pairs unmerged; ``mlp_width`` < width keeps the most important groups (mean activation
   magnitude × outgoing weight norm) and lets the least-squares step compensate.
3. **Layer-wise least squares** (§3.2): block by block, in forward order, each ``nn.Linear`` (qkv, proj, fc1,
   fc2, and the classifier head when there is one) is refit in closed form so that, on the *merged model's own*
   inputs to that layer, it outputs the weighted mean of the models' permuted outputs (per merged unit: the
   mean over its members). PLeaS minimises the same objective with ~400 Adam steps; the normal equations give
   its minimiser. With LayerScale the target is the mean of γ_t ⊙ out_t divided by the merged γ.

Deliberate differences: N > 2 models are aligned to one anchor (PLeaS merges pairs); per-layer widths come
from one ``mlp_width`` for every block (PLeaS picks per-layer budgets with a QP); with qk-norm weights the q/k
dims are only permuted with their head (the norm's weights are shared across heads). Everything else
(embeddings, norms, biases outside refit layers) is the weighted mean of the aligned models. Features of all
models on ``calib`` are held in memory: PLeaS is not a streaming method.

The merged state dict has a new MLP width when ``mlp_width`` is set: :func:`model_for` builds the module.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..adapters.timm_vit_surgery import _slice_linear
from ..errors import ConfigError, UnsupportedModelError
from ..models.load import load_state_dict_strict
from ..ops import merging as ops
from .configs import PLeaSConfig
from .core import MergeContext, register_merge
from .data_methods import load_into, materialize
from .sources import check_compatible

_log = logging.getLogger(__name__)

RES, QKV, V, HID = "res", "qkv", "v", "h"
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
#: tensor-name suffix inside a block → [(axis, permutation kind)].
_BLOCK_RULES: dict[str, list[tuple[int, str]]] = {
    "norm1.weight": [(0, RES)],
    "norm1.bias": [(0, RES)],
    "norm2.weight": [(0, RES)],
    "norm2.bias": [(0, RES)],
    "ls1.gamma": [(0, RES)],
    "ls2.gamma": [(0, RES)],
    "attn.qkv.weight": [(0, QKV), (1, RES)],
    "attn.qkv.bias": [(0, QKV)],
    "attn.q_norm.weight": [],
    "attn.q_norm.bias": [],
    "attn.k_norm.weight": [],
    "attn.k_norm.bias": [],
    "attn.proj.weight": [(0, RES), (1, V)],
    "attn.proj.bias": [(0, RES)],
    "mlp.fc1.weight": [(0, HID), (1, RES)],
    "mlp.fc1.bias": [(0, HID)],
    "mlp.fc2.weight": [(0, RES), (1, HID)],
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
_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


@dataclass
class Alignment:
    """How one model's units map onto the anchor's: ``x_aligned = x.index_select(axis, perm)``."""

    res: torch.Tensor  # [D]
    qkv: list[torch.Tensor]  # per block [3·A] rows of attn.qkv
    v: list[torch.Tensor]  # per block [A] columns of attn.proj
    hidden: list[torch.Tensor]  # per block [H]
    hidden_corr: list[torch.Tensor]  # per block [H] correlation of each matched neuron with the anchor's
    heads: list[list[int]]  # per block: anchor head h ← this model's head heads[h]

    @staticmethod
    def identity(model: nn.Module, dim: int) -> Alignment:
        """The anchor's own (identity) alignment."""
        ar, blocks = torch.arange, list(model.blocks)
        return Alignment(
            ar(dim),
            [ar(b.attn.qkv.out_features) for b in blocks],
            [ar(b.attn.proj.in_features) for b in blocks],
            [ar(b.mlp.fc1.out_features) for b in blocks],
            [torch.ones(b.mlp.fc1.out_features, dtype=torch.float64) for b in blocks],
            [list(range(int(b.attn.num_heads))) for b in blocks],
        )


def _rules(key: str) -> tuple[list[tuple[int, str]], int | None]:
    m = _BLOCK.match(key)
    if m:
        rule, block = _BLOCK_RULES.get(m.group(2)), int(m.group(1))
    else:
        rule, block = _TOP_RULES.get(key), None
    if rule is None:
        raise UnsupportedModelError(
            f"PLeaS does not know how to permute tensor {key!r}: it supports plain timm VisionTransformer "
            "blocks (norm1/attn with fused qkv/ls/norm2/mlp); use another merge method for this model"
        )
    return rule, block


def permute_state_dict(
    sd: dict[str, torch.Tensor],
    res: torch.Tensor,
    hidden: list[torch.Tensor],
    attn: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict[str, torch.Tensor]:
    """Apply the residual permutation ``res`` [D], per-block hidden permutations [H] and (optionally) per-block
    attention permutations ``(qkv_rows [3A], proj_cols [A])`` to a timm ViT state dict (new tensors)."""
    out = {}
    for k, v in sd.items():
        rule, block = _rules(k)
        t = v
        for axis, which in rule:
            if which == RES:
                perm = res
            elif which == HID:
                perm = hidden[block]
            elif attn is None:
                continue
            else:
                perm = attn[block][0] if which == QKV else attn[block][1]
            t = t.index_select(axis if axis >= 0 else t.ndim + axis, perm)
        out[k] = t.clone() if t is v else t
    return out


def model_for(template: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``template`` whose MLP widths match ``state`` (a PLeaS merge with ``mlp_width``), state loaded."""
    model = copy.deepcopy(template)
    for i, blk in enumerate(model.blocks):
        width = state[f"blocks.{i}.mlp.fc1.weight"].shape[0]
        mlp = blk.mlp
        if mlp.fc1.out_features != width:
            idx = torch.arange(width) % mlp.fc1.out_features  # shapes only; the weights are loaded below
            mlp.fc1 = _slice_linear(mlp.fc1, rows=idx)
            mlp.fc2 = _slice_linear(mlp.fc2, cols=idx)
    load_state_dict_strict(model, {k: v.float() for k, v in state.items()}, source="PLeaS merge")
    return model


class _Stop(Exception):
    pass


def _capture(model: nn.Module, x: torch.Tensor, batch: int) -> dict[str, torch.Tensor]:
    """Per block: output [T, D], each block linear's output, fc2's input (hidden activations); head logits."""
    feats: dict[str, list[torch.Tensor]] = {}
    hooks = []

    def keep(name, with_input=False):
        def fn(mod, inp, out):
            y = out.detach()
            feats.setdefault(f"{name}.out", []).append(y.reshape(-1, y.shape[-1]))
            if with_input:
                xi = inp[0].detach()
                feats.setdefault(f"{name}.in", []).append(xi.reshape(-1, xi.shape[-1]))

        return fn

    for i, blk in enumerate(model.blocks):
        hooks.append(blk.register_forward_hook(keep(f"blocks.{i}")))
        for lin in _LINEARS:
            hooks.append(blk.get_submodule(lin).register_forward_hook(keep(f"blocks.{i}.{lin}", lin == "mlp.fc2")))
    if _has_head(model):
        hooks.append(model.head.register_forward_hook(keep("head")))
    try:
        with torch.inference_mode():
            for j in range(0, x.shape[0], batch):
                model(x[j : j + batch])
    finally:
        for h in hooks:
            h.remove()
    return {k: torch.cat(v) for k, v in feats.items()}


def _layer_inputs(model: nn.Module, name: str, x: torch.Tensor, batch: int) -> torch.Tensor:
    """Inputs [T, in] of submodule ``name`` on ``x`` (the rest of the forward pass is skipped)."""
    got: list[torch.Tensor] = []

    def fn(mod, inp):
        got.append(inp[0].detach().reshape(-1, inp[0].shape[-1]))
        raise _Stop

    h = model.get_submodule(name).register_forward_pre_hook(fn)
    try:
        with torch.inference_mode():
            for j in range(0, x.shape[0], batch):
                try:
                    model(x[j : j + batch])
                except _Stop:
                    pass
    finally:
        h.remove()
    return torch.cat(got)


def _has_head(model: nn.Module) -> bool:
    return isinstance(getattr(model, "head", None), nn.Linear)


def align(fa: dict, fb: dict, model: nn.Module, *, within_qk: list[bool]) -> Alignment:
    """Match model B's units onto model A's from their captured features (see the module docstring)."""
    depth = len(model.blocks)
    res = ops.match_permutation(
        torch.cat([fa[f"blocks.{i}.out"] for i in range(depth)]),
        torch.cat([fb[f"blocks.{i}.out"] for i in range(depth)]),
    )
    qkv_rows, v_cols, hidden, hcorr, heads = [], [], [], [], []
    for i, blk in enumerate(model.blocks):
        n_h, hd = int(blk.attn.num_heads), int(blk.attn.head_dim)
        a_dim = n_h * hd
        c = ops.feature_correlation(fa[f"blocks.{i}.attn.qkv.out"], fb[f"blocks.{i}.attn.qkv.out"])  # [3A, 3A]
        c = c.reshape(3, n_h, hd, 3, n_h, hd)
        score = torch.zeros(n_h, n_h, dtype=torch.float64)
        p_qk, p_v = {}, {}
        for ha in range(n_h):
            for hb in range(n_h):
                s_qk = c[0, ha, :, 0, hb] + c[1, ha, :, 1, hb]  # [hd, hd]
                if within_qk[i]:
                    p_qk[ha, hb], v_qk = ops.hungarian(s_qk)
                else:
                    p_qk[ha, hb], v_qk = torch.arange(hd), float(s_qk.trace())
                p_v[ha, hb], v_v = ops.hungarian(c[2, ha, :, 2, hb])
                score[ha, hb] = v_qk + v_v
        ph, _ = ops.hungarian(score)  # anchor head h ← B's head ph[h]
        q = [int(ph[h]) * hd + p_qk[h, int(ph[h])] for h in range(n_h)]
        v = [int(ph[h]) * hd + p_v[h, int(ph[h])] for h in range(n_h)]
        qkv_rows.append(torch.cat(q + [a_dim + t for t in q] + [2 * a_dim + t for t in v]))
        v_cols.append(torch.cat(v))
        heads.append(ph.tolist())
        corr = ops.feature_correlation(fa[f"blocks.{i}.mlp.fc2.in"], fb[f"blocks.{i}.mlp.fc2.in"])  # [H, H]
        perm, _ = ops.hungarian(corr)
        hidden.append(perm)
        hcorr.append(corr[torch.arange(perm.numel()), perm])
    return Alignment(res, qkv_rows, v_cols, hidden, hcorr, heads)


def plan_hidden(
    width: int, target: int, n_models: int, corr: torch.Tensor, importance: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merged hidden units for one block: (group index [target], members [N, target] bool).

    ``corr`` [width]: mean correlation of each matched group; ``importance`` [width]. A unit is the mean of its
    members' aligned neuron ``group``. Wider than ``width``: the least-correlated groups are split into per-model
    units (models N−1, N−2, … leave the group first); narrower: the most important groups are kept.
    """
    if target <= width:
        keep = torch.sort(torch.topk(importance, target).indices).values
        return keep, torch.ones(n_models, target, dtype=torch.bool)
    groups = list(range(width))
    members = [[True] * n_models for _ in range(width)]
    extra = target - width
    for g in torch.argsort(corr).tolist():
        if extra <= 0:
            break
        k = min(n_models - 1, extra)
        for t in range(n_models - 1, n_models - 1 - k, -1):
            members[g][t] = False
            groups.append(g)
            members.append([s == t for s in range(n_models)])
        extra -= k
    return torch.as_tensor(groups), torch.as_tensor(members).T.contiguous()


@register_merge(
    "pleas",
    PLeaSConfig,
    paper="PLeaS: Merging Models with Permutations and Least Squares (CVPR 2025)",
    needs_base=False,
    needs=("calib",),
)
def merge_pleas(sources, base, cfg: PLeaSConfig, ctx: MergeContext):
    n = len(sources)
    if n < 2:
        raise ConfigError(f"PLeaS merges at least 2 models, got {n}")
    if not isinstance(ctx.calib, torch.Tensor):
        raise ConfigError("PLeaS needs calib= as one tensor of unlabeled input images [N, C, H, W]")
    w = [1.0 / n] * n if cfg.weights is None else [float(x) / sum(cfg.weights) for x in cfg.weights]
    if len(w) != n:
        raise ConfigError(f"PLeaSConfig.weights has {len(w)} entries for {n} models: give one weight per model")
    keys = check_compatible(sources, None)
    tmpl = ctx.template("pleas")
    if getattr(tmpl, "blocks", None) is None or not all(hasattr(b.attn, "qkv") for b in tmpl.blocks):
        raise UnsupportedModelError("PLeaS supports timm VisionTransformer models (with .blocks and fused attn.qkv)")
    for k in keys:
        _rules(k)  # unsupported tensors fail before any work
    depth, x, bs = len(tmpl.blocks), ctx.calib, int(cfg.batch)
    sds = [materialize(s, keys) for s in sources]
    feats = []
    for s, sd in zip(sources, sds, strict=True):
        feats.append(_capture(load_into(tmpl, sd, source=s.label).eval(), x, bs))
    within_qk = [f"blocks.{i}.attn.q_norm.weight" not in keys for i in range(depth)]
    hidden = [int(b.mlp.fc1.out_features) for b in tmpl.blocks]
    aligns = [Alignment.identity(tmpl, feats[0]["blocks.0.out"].shape[-1])]
    for t in range(1, n):
        aligns.append(align(feats[0], feats[t], tmpl, within_qk=within_qk))
    psd = [
        permute_state_dict(sd, al.res, al.hidden, list(zip(al.qkv, al.v, strict=True)))
        for sd, al in zip(sds, aligns, strict=True)
    ]
    out = {
        k: sum(wt * p[k] for wt, p in zip(w, psd, strict=True)) if psd[0][k].is_floating_point() else psd[0][k]
        for k in keys
    }

    # hidden-unit plan per block, initial MLP weights
    wt = torch.tensor(w, dtype=torch.float64)
    plans = []
    for i in range(depth):
        pre = f"blocks.{i}.mlp"
        corr = torch.stack([al.hidden_corr[i] for al in aligns[1:]]).mean(0)  # [H]
        act = torch.stack(
            [f[f"{pre}.fc2.in"][:, al.hidden[i]].abs().mean(0) for f, al in zip(feats, aligns, strict=True)]
        )
        col = torch.stack([p[f"{pre}.fc2.weight"].norm(dim=0) for p in psd])  # [N, H]
        importance = (wt[:, None] * act.double() * col.double()).sum(0)
        target = hidden[i] if cfg.mlp_width is None else int(cfg.mlp_width)
        if target > n * hidden[i]:
            raise ConfigError(f"PLeaSConfig.mlp_width={target} exceeds N·width = {n * hidden[i]}; use a smaller width")
        groups, members = plan_hidden(hidden[i], target, n, corr, importance)
        mix = members.double() * wt[:, None]  # [N, H']
        mean_w = mix / mix.sum(0, keepdim=True)  # per unit: weights of its members, summing to 1
        plans.append((groups, mean_w, mix))
        for kind in ("weight", "bias"):
            k = f"{pre}.fc1.{kind}"
            if k in out:
                out[k] = sum(
                    mean_w[t].float().reshape(-1, *[1] * (psd[t][k].ndim - 1)) * psd[t][k][groups] for t in range(n)
                )
        out[f"{pre}.fc2.weight"] = sum(mix[t].float() * psd[t][f"{pre}.fc2.weight"][:, groups] for t in range(n))

    if cfg.refit:
        merged = model_for(tmpl, out).eval()
        for i in range(depth):
            groups, mean_w, _ = plans[i]
            for lin in _LINEARS:
                name = f"blocks.{i}.{lin}"
                outs = [_align_out(f[f"{name}.out"], al, i, lin) for f, al in zip(feats, aligns, strict=True)]
                if lin == "mlp.fc1":
                    target = sum(o[:, groups] * mean_w[t].float() for t, o in enumerate(outs))
                else:
                    target = _weighted_target(outs, w, psd, out, i, lin)
                _refit(merged, out, name, _layer_inputs(merged, name, x, bs), target, cfg.ridge)
            if ctx.progress:
                ctx.progress(i + 1, depth, f"block {i}")
        if _has_head(tmpl) and "head.weight" in out:
            target = sum(wi * f["head.out"] for wi, f in zip(w, feats, strict=True))
            _refit(merged, out, "head", _layer_inputs(merged, "head", x, bs), target, cfg.ridge)
    ctx.info.update(
        mlp_width=[int(p[0].numel()) for p in plans],
        residual_permutation_identity=[bool((al.res == torch.arange(al.res.numel())).all()) for al in aligns[1:]],
        head_permutations=[al.heads for al in aligns[1:]],
        residual_permutations=[al.res.tolist() for al in aligns[1:]],
        refit=bool(cfg.refit),
    )
    return {k: v.to(sources[0].dtype(k)) for k, v in out.items()}


def _align_out(y: torch.Tensor, al: Alignment, i: int, lin: str) -> torch.Tensor:
    perm = {"attn.qkv": al.qkv[i], "attn.proj": al.res, "mlp.fc1": al.hidden[i], "mlp.fc2": al.res}[lin]
    return y[:, perm]


def _weighted_target(outs, w, psd, out, i: int, lin: str) -> torch.Tensor:
    """Σ_t w_t out_t; behind LayerScale (proj → ls1, fc2 → ls2): Σ_t w_t γ_t ⊙ out_t / γ_merged."""
    ls = {"attn.proj": f"blocks.{i}.ls1.gamma", "mlp.fc2": f"blocks.{i}.ls2.gamma"}.get(lin)
    if ls is None or ls not in out:
        return sum(wi * o for wi, o in zip(w, outs, strict=True))
    g = out[ls]
    g = torch.where(g.abs() < 1e-8, torch.full_like(g, 1e-8), g)
    return sum(wi * p[ls] * o for wi, p, o in zip(w, psd, outs, strict=True)) / g


def _refit(merged: nn.Module, out: dict, name: str, xin: torch.Tensor, target: torch.Tensor, ridge: float) -> None:
    """Least-squares refit of linear ``name`` (in ``out`` and in ``merged``); kept as merged when ``calib`` gives
    fewer than 2·(in + 1) samples (e.g. a classifier head sees one token per image): the fit would overfit."""
    if xin.shape[0] < 2 * (xin.shape[1] + 1):
        _log.warning("PLeaS: %s has %d samples for %d inputs; not refit (pass more calib images)", name, *xin.shape)
        return
    has_bias = f"{name}.bias" in out
    weight, bias = ops.least_squares_fit(xin, target, ridge=ridge, bias=has_bias)
    out[f"{name}.weight"] = weight
    lin = merged.get_submodule(name)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if has_bias:
            out[f"{name}.bias"] = bias
            lin.bias.copy_(bias)
