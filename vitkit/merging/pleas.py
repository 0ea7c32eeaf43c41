"""PLeaS for N ≥ 2 ViTs of one architecture, possibly trained from *different* bases (Nasery et al., "PLeaS:
Merging Models with Permutations and Least Squares", CVPR 2025).

1. **Permutation matching** (PLeaS §3.1, activation matching as in Git Re-Basin): every model runs on the same
   unlabeled ``calib`` images; model t ≥ 1 is aligned onto model 0 (the anchor) with the Hungarian method on
   activation correlations: one permutation of the residual stream (all block outputs pooled), per block one
   permutation of the attention **heads as units** (score of a head pair = best within-head matching of its
   q/k dims + best within-head matching of its v dims), the within-head permutations themselves (q and k share
   one so that q·k is unchanged; v has its own, carried into the attention output's columns), and one
   permutation of the MLP hidden neurons. Permuting a model this way leaves its function unchanged (LayerNorm is
   permutation-equivariant), which the tests check. Which axes of which tensors each permutation acts on is the
   host adapter's knowledge (``HostAdapter.permutation_axes``).
2. **Width** (PLeaS' partial matching): matched hidden neurons form *groups* (one unit per model). At the
   model's own width every group is one merged unit (weighted mean of its members). ``mlp_width`` > width
   splits the least-correlated groups into separate per-model units (up to N·width), as PLeaS keeps its
   worst-matched pairs unmerged; ``mlp_width`` < width keeps the most important groups (mean activation
   magnitude × outgoing weight norm) and lets the least-squares step compensate.
3. **Layer-wise least squares** (§3.2): block by block, in forward order, each ``nn.Linear`` (the roles qkv,
   attn_out, mlp_in, mlp_out, and the classifier head when there is one) is refit in closed form so that, on the
   *merged model's own* inputs to that layer, it outputs the weighted mean of the models' permuted outputs (per
   merged unit: the mean over its members). PLeaS minimises the same objective with ~400 Adam steps; the normal
   equations give its minimiser. With LayerScale the target is the mean of γ_t ⊙ out_t divided by the merged γ.

Deliberate differences: N > 2 models are aligned to one anchor (PLeaS merges pairs); per-layer widths come
from one ``mlp_width`` for every block (PLeaS picks per-layer budgets with a QP); with qk-norm weights the q/k
dims are only permuted with their head (the norm's weights are shared across heads). Everything else
(embeddings, norms, biases outside refit layers) is the weighted mean of the aligned models. Features of all
models on ``calib`` are held in memory: PLeaS is not a streaming method.

The merged state dict has a new MLP width when ``mlp_width`` is set: :func:`model_for` builds the module.
Features and matching (step 1, and the width plan) are in :mod:`.pleas_matching`.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..adapters import ADAPTERS, HostAdapter, adapter_for
from ..adapters.protocol import ATTN_QKV, BLOCK_LINEARS, MLP_HIDDEN, RESIDUAL, block_keys
from ..configs import TransformConfig
from ..errors import ConfigError
from ..models.load import load_state_dict_strict
from ..ops import merging as ops
from ..registry import register_merge
from ..validate import check_bool, check_int, check_number
from .core import MergeContext, load_into, materialize
from .pleas_matching import (
    Alignment,
    BlockLayout,
    align,
    block_layout,
    capture_features,
    head_name,
    layer_inputs,
    plan_hidden,
)
from .sources import check_compatible

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PLeaSConfig(TransformConfig):
    """PLeaS (Nasery et al. 2025) for N ≥ 2 ViTs of one architecture, possibly from different bases: align
    every model onto the first (Hungarian on activation correlations over ``calib=``: residual stream, attention
    heads as units + dims within heads, MLP neurons), merge matched units (``weights``: per-model, normalised;
    default uniform), then refit every block linear by layer-wise least squares on the merged model's own
    inputs. ``mlp_width`` (default: unchanged) sets the merged MLP hidden width, up to N × the models' width;
    build the module with :func:`vitkit.merging.pleas.model_for`. ``ridge`` is relative to the mean Gram diagonal."""

    weights: tuple[float, ...] | None = None
    mlp_width: int | None = None
    refit: bool = True
    ridge: float = 1e-4
    batch: int = 256

    def validate(self) -> None:
        if self.weights is not None and (any(float(w) < 0 for w in self.weights) or sum(self.weights) <= 0):
            raise ConfigError(f"PLeaSConfig.weights must be >= 0 with a positive sum, got {list(self.weights)}")
        check_int(self.mlp_width, "PLeaSConfig.mlp_width", low=1, optional=True, why=" to keep the width")
        check_bool(self.refit, "PLeaSConfig.refit")
        check_number(self.ridge, "PLeaSConfig.ridge", low=0)
        check_int(self.batch, "PLeaSConfig.batch", low=1)


def _host_for_keys(keys) -> HostAdapter:
    """The adapter whose key roles cover every key of a bare state dict (else the first: it names the stray key)."""
    for host in ADAPTERS:
        if all(r.part != "other" for r in host.key_roles(keys).values()):
            return host
    return ADAPTERS[0]


def permute_state_dict(
    sd: dict[str, torch.Tensor],
    res: torch.Tensor,
    hidden: list[torch.Tensor],
    attn: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    *,
    host: HostAdapter | None = None,
) -> dict[str, torch.Tensor]:
    """Apply the residual permutation ``res`` [D], per-block hidden permutations [H] and (optionally) per-block
    attention permutations ``(qkv_rows [3A], attn_out_cols [A])`` to a ViT state dict (new tensors)."""
    host = host or _host_for_keys(sd)
    roles = host.key_roles(sd)
    axes = host.permutation_axes(roles)
    out = {}
    for k, v in sd.items():
        block = roles[k].block
        t = v
        for axis, group in axes[k]:
            if group == RESIDUAL:
                perm = res
            elif group == MLP_HIDDEN:
                perm = hidden[block]
            elif attn is None:
                continue
            else:
                perm = attn[block][0] if group == ATTN_QKV else attn[block][1]
            t = t.index_select(axis if axis >= 0 else t.ndim + axis, perm)
        out[k] = t.clone() if t is v else t
    return out


def model_for(template: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``template`` whose MLP widths match ``state`` (a PLeaS merge with ``mlp_width``), state loaded."""
    model = copy.deepcopy(template)
    host = adapter_for(model)
    blocks = block_keys(host.key_roles(state))
    host.set_mlp_widths(model, [state[f"{b.linears['mlp_in']}.weight"].shape[0] for b in blocks])
    load_state_dict_strict(model, {k: v.float() for k, v in state.items()}, source="PLeaS merge")
    return model


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
    host = adapter_for(tmpl)
    host.describe(tmpl)  # an unsupported model, then a tensor without a known symmetry, fails before any work
    host.permutation_axes(host.key_roles(keys))
    x, bs = ctx.calib, int(cfg.batch)
    sds = [materialize(s, keys) for s in sources]
    blocks = block_layout(tmpl, sds[0])
    feats = []
    for s, sd in zip(sources, sds, strict=True):
        feats.append(capture_features(load_into(tmpl, sd, source=s.label).eval(), blocks, x, bs))
    aligns = [Alignment.identity(feats[0]["0/out"].shape[-1], blocks)]
    for t in range(1, n):
        aligns.append(align(feats[0], feats[t], blocks))
    psd = [
        permute_state_dict(sd, al.res, al.hidden, list(zip(al.qkv_rows, al.v_cols, strict=True)), host=host)
        for sd, al in zip(sds, aligns, strict=True)
    ]
    out = {
        k: sum(wt * p[k] for wt, p in zip(w, psd, strict=True)) if psd[0][k].is_floating_point() else psd[0][k]
        for k in keys
    }
    plans = _merge_mlps(out, psd, feats, aligns, blocks, w, cfg.mlp_width)
    if cfg.refit:
        _refit_all(tmpl, out, psd, feats, aligns, blocks, plans, w, x, cfg, ctx)
    ctx.info.update(
        mlp_width=[int(p[0].numel()) for p in plans],
        residual_permutation_identity=[bool((al.res == torch.arange(al.res.numel())).all()) for al in aligns[1:]],
        head_permutations=[al.heads for al in aligns[1:]],
        residual_permutations=[al.res.tolist() for al in aligns[1:]],
        refit=bool(cfg.refit),
    )
    return {k: v.to(sources[0].dtype(k)) for k, v in out.items()}


def _merge_mlps(out, psd, feats, aligns, blocks: list[BlockLayout], w: list[float], mlp_width: int | None) -> list:
    """Per block: plan the merged hidden units (:func:`plan_hidden`) and write the merged mlp_in weight/bias and
    mlp_out weight into ``out``; returns per block ``(groups [H'], mean weights [N, H'], mix [N, H'])``."""
    n = len(psd)
    wt = torch.tensor(w, dtype=torch.float64)
    plans = []
    for i, blk in enumerate(blocks):
        fc_in, fc_out = blk.keys.linears["mlp_in"], blk.keys.linears["mlp_out"]
        corr = torch.stack([al.hidden_corr[i] for al in aligns[1:]]).mean(0)  # [H]
        act = torch.stack(
            [f[f"{i}/hidden"][:, al.hidden[i]].abs().mean(0) for f, al in zip(feats, aligns, strict=True)]
        )
        col = torch.stack([p[f"{fc_out}.weight"].norm(dim=0) for p in psd])  # [N, H]
        importance = (wt[:, None] * act.double() * col.double()).sum(0)
        target = blk.hidden if mlp_width is None else int(mlp_width)
        if target > n * blk.hidden:
            raise ConfigError(f"PLeaSConfig.mlp_width={target} exceeds N·width = {n * blk.hidden}; use a smaller width")
        groups, members = plan_hidden(blk.hidden, target, n, corr, importance)
        mix = members.double() * wt[:, None]  # [N, H']
        mean_w = mix / mix.sum(0, keepdim=True)  # per unit: weights of its members, summing to 1
        plans.append((groups, mean_w, mix))
        for kind in ("weight", "bias"):
            k = f"{fc_in}.{kind}"
            if k in out:
                out[k] = sum(
                    mean_w[t].float().reshape(-1, *[1] * (psd[t][k].ndim - 1)) * psd[t][k][groups] for t in range(n)
                )
        k = f"{fc_out}.weight"
        out[k] = sum(mix[t].float() * psd[t][k][:, groups] for t in range(n))
    return plans


def _refit_all(tmpl, out, psd, feats, aligns, blocks: list[BlockLayout], plans, w, x, cfg: PLeaSConfig, ctx) -> None:
    """Layer-wise least squares (§3.2): every block linear in forward order, then the head, in place in ``out``."""
    merged = model_for(tmpl, out).eval()
    bs = int(cfg.batch)
    for i, blk in enumerate(blocks):
        groups, mean_w, _ = plans[i]
        for role in BLOCK_LINEARS:
            name = blk.keys.linears[role]
            outs = [_align_out(f[f"{i}/{role}"], al, i, role) for f, al in zip(feats, aligns, strict=True)]
            if role == "mlp_in":
                target = sum(o[:, groups] * mean_w[t].float() for t, o in enumerate(outs))
            else:
                target = _weighted_target(outs, w, psd, out, blk.keys.layer_scale.get(role))
            _refit(merged, out, name, layer_inputs(merged, name, x, bs), target, cfg.ridge)
        if ctx.progress:
            ctx.progress(i + 1, len(blocks), f"block {i}")
    head = head_name(tmpl)
    if head is not None and f"{head}.weight" in out:
        target = sum(wi * f["head"] for wi, f in zip(w, feats, strict=True))
        _refit(merged, out, head, layer_inputs(merged, head, x, bs), target, cfg.ridge)


def _align_out(y: torch.Tensor, al: Alignment, i: int, role: str) -> torch.Tensor:
    perm = {"qkv": al.qkv_rows[i], "attn_out": al.res, "mlp_in": al.hidden[i], "mlp_out": al.res}[role]
    return y[:, perm]


def _weighted_target(outs, w, psd, out, ls: str | None) -> torch.Tensor:
    """Σ_t w_t out_t; behind LayerScale (key ``ls`` scaling this linear's output): Σ_t w_t γ_t ⊙ out_t / γ_merged."""
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
