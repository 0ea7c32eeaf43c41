"""The ``prune`` transform: score → plan (global or uniform) → shape surgery; ``restore`` for artifacts."""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any

import torch
import torch.nn as nn

from ..adapters import adapter_for
from ..adapters.runtime import block_modules
from ..configs import select_names
from ..errors import CheckpointError, ConfigError
from ..history import original_model, stash_original
from ..ops import pruning as P
from ..registry import register_transform
from .config import PruneConfig
from .reconstruct import reconstruct_outputs_
from .saliency import calibration_batches, data_free_scores, gradient_scores

_log = logging.getLogger(__name__)


def geometry(model: nn.Module, latency: list | None = None) -> list[P.BlockGeometry]:
    """Per-block sizes for the cost model; ``latency``: measured :class:`~.latency.LatencyCosts` per block."""
    host = adapter_for(model)
    info = host.describe(model)
    out = []
    for i, blk in enumerate(block_modules(model)):
        lin = host.block_linears(blk, index=i)
        out.append(
            P.BlockGeometry(
                dim=info.block_dims[i],
                num_heads=info.num_heads[i],
                head_dim=info.head_dim[i],
                hidden=info.mlp_hidden[i],
                tokens=info.block_tokens[i],
                span=info.block_spans[i],
                val_dim=lin["attn_out"].in_features // info.num_heads[i],  # = head_dim but for EfficientFormer
                qkv_bias=(lin["qkv"] or lin.get("attn_q")).bias is not None,  # fused or separate projections
                fc1_bias=lin["mlp_in"].bias is not None,
                gated=lin["attn_gate"] is not None,
                latency=None if latency is None else (latency[i].head, latency[i].neuron, latency[i].fixed),
            )
        )
    return out


def model_cost(model: nn.Module, target: str) -> int:
    """Whole-model params, or MACs per image from one real forward (attention counted analytically)."""
    if target == "params":
        return sum(p.numel() for p in model.parameters())
    from ..bench.flops import count_macs

    was = model.training
    model.eval()
    try:
        return count_macs(model, torch.zeros(1, *adapter_for(model).input_size(model)))
    finally:
        model.train(was)


def structure(model: nn.Module) -> dict[str, dict[str, int]]:
    """Per-block sizes ``{<block name>: {"num_heads", "head_dim", "mlp_hidden"}}``."""
    info = adapter_for(model).describe(model)
    return {
        name: {"num_heads": h, "head_dim": d, "mlp_hidden": n}
        for name, h, d, n in zip(info.block_names, info.num_heads, info.head_dim, info.mlp_hidden, strict=True)
    }


def score_model(model: nn.Module, cfg: PruneConfig, calib) -> tuple[list, str]:
    """Raw saliency per block, and the criterion actually used (a dry run without data falls back to l1)."""
    if cfg.importance in P.DATA_FREE:
        return data_free_scores(model, cfg.importance), cfg.importance
    batches = calibration_batches(calib, model, cfg.calib_images, cfg.calib_batch_size, cfg.seed)
    return gradient_scores(model, cfg.importance, batches), cfg.importance


def measure_latency(model: nn.Module, cfg: PruneConfig) -> dict[str, Any]:
    """Per-block unit costs and the whole-model seconds per image on this CPU (``target="latency"``)."""
    from .latency import measure_block_costs, measure_model

    costs = measure_block_costs(model, batch_size=cfg.latency_batch, repeats=cfg.latency_repeats)
    total = measure_model(model, batch_size=cfg.latency_batch, repeats=cfg.latency_repeats)
    return {"costs": costs, "total": total}


def make_plan(model: nn.Module, cfg: PruneConfig, scores: list, lat: dict | None = None) -> tuple[P.Plan, float]:
    """Choose the units to remove; returns the plan and the budget (cost to remove)."""
    info = adapter_for(model).describe(model)
    chosen = select_names(info.block_names, cfg.targets, cfg.skip, what="blocks")
    idx = [info.block_names.index(n) for n in chosen]
    geoms = geometry(model, None if lat is None else lat["costs"])
    total = lat["total"] if cfg.target == "latency" and lat else model_cost(model, cfg.target)
    budget = cfg.ratio * total
    if cfg.ratio == 0:
        return P.Plan({}, {}, [], 0.0), 0.0
    if cfg.allocation == "uniform":
        sub = [geoms[b] for b in idx]
        r, hs, ms = P.uniform_counts(sub, cfg.target, budget, cfg.groups, round_to=cfg.round_to)
        heads, mlp = {}, {}
        removed = 0.0
        for b, h, m in zip(idx, hs, ms, strict=True):
            g = geoms[b]
            if h >= g.num_heads:
                raise ConfigError(
                    f"ratio {cfg.ratio} would prune every head of {info.block_names[b]} (uniform {r:.2f} of "
                    f"{g.num_heads}): lower the ratio, or use allocation='global' with groups including 'blocks'"
                )
            if m >= g.hidden:
                raise ConfigError(
                    f"ratio {cfg.ratio} would prune every MLP neuron of {info.block_names[b]}: lower the ratio"
                )
            if h:
                heads[b] = P.lowest(scores[b].heads, h)
            if m:
                mlp[b] = P.lowest(scores[b].mlp, m)
            removed += h * P.head_cost(g, cfg.target) + m * P.neuron_cost(g, cfg.target)
        plan = P.Plan(heads, mlp, [], removed)
    else:
        units: list[P.Unit] = []
        for b in idx:
            if "heads" in cfg.groups:
                s = P.normalize(scores[b].heads, cfg.normalize)
                units += [P.Unit("head", b, h, float(v)) for h, v in enumerate(s.tolist())]
            if "mlp" in cfg.groups:
                s = P.normalize(scores[b].mlp, cfg.normalize)
                units += [P.Unit("mlp", b, n, float(v)) for n, v in enumerate(s.tolist())]
        if "blocks" in cfg.groups:
            s = P.normalize(torch.tensor([scores[b].block for b in idx], dtype=torch.float64), cfg.normalize)
            units += [P.Unit("block", b, 0, float(v)) for b, v in zip(idx, s.tolist(), strict=True)]
        plan = P.plan_global(units, geoms, cfg.target, budget, min_heads=cfg.min_heads, round_to=cfg.round_to)
    if plan.removed_cost < budget * 0.999:
        raise ConfigError(
            f"cannot remove {cfg.ratio:.0%} of {cfg.target} with groups={list(cfg.groups)} "
            f"(at most {plan.removed_cost / total:.1%} here): lower the ratio or add groups"
        )
    return plan, budget


def _decisions(model: nn.Module, cfg: PruneConfig, plan: P.Plan, used: str) -> dict[str, Any]:
    geoms = geometry(model)
    names = adapter_for(model).describe(model).block_names
    kept_heads = {
        names[b]: [h for h in range(geoms[b].num_heads) if h not in set(v)] for b, v in sorted(plan.heads.items())
    }
    kept_mlp = {names[b]: [n for n in range(geoms[b].hidden) if n not in set(v)] for b, v in sorted(plan.mlp.items())}
    return {
        "importance_used": used,
        "depth_before": len(names),
        "before": structure(model),
        "pruned_heads": {names[b]: v for b, v in sorted(plan.heads.items())},
        "pruned_mlp_count": {names[b]: len(v) for b, v in sorted(plan.mlp.items())},
        "pruned_blocks": [names[b] for b in plan.removed_blocks],
        "kept_heads": kept_heads,
        "kept_mlp": kept_mlp,
        "kept_blocks": [b for b in range(len(names)) if b not in plan.removed_blocks],
    }


def _block_index(names: tuple[str, ...], name: str) -> int:
    """Index of block ``name`` in the model (a recorded decision names blocks as the model did)."""
    if name not in names:
        raise CheckpointError(f"prune step names block {name!r}, which the model does not have ({len(names)} blocks)")
    return names.index(name)


def replay(model: nn.Module, decisions: dict[str, Any]) -> None:
    """Apply recorded decisions (kept heads / neurons / blocks) to ``model``, checking its structure first."""
    host = adapter_for(model)
    names = host.describe(model).block_names
    depth = int(decisions.get("depth_before", len(names)))
    if len(names) != depth:
        raise CheckpointError(f"prune step expects {depth} blocks but the model has {len(names)}")
    have = structure(model)
    for name, want in (decisions.get("before") or {}).items():
        got = have.get(name)
        if got is None or any(int(got[k]) != int(v) for k, v in want.items()):
            raise CheckpointError(f"{name}: structure {got} does not match the recipe's {dict(want)} before pruning")
    blocks = block_modules(model)
    for name, keep in (decisions.get("kept_heads") or {}).items():
        i = _block_index(names, name)
        host.prune_heads(blocks[i], keep, index=i)
    for name, keep in (decisions.get("kept_mlp") or {}).items():
        i = _block_index(names, name)
        host.prune_mlp(blocks[i], keep, index=i)
    host.keep_blocks(model, decisions.get("kept_blocks") or list(range(depth)))


def _restore(model: nn.Module, cfg: PruneConfig, decisions: dict) -> None:
    """Reshape a freshly built model to the pruned structure before the strict ``load_state_dict``."""
    adapter_for(model).check_prunable(model, cfg.groups)
    replay(model, decisions)


def unpruned_teacher(model: nn.Module) -> nn.Module | None:
    """The model as it was before its first ``prune`` step in this process (None if never pruned here); a later
    ``distill`` step uses it as the teacher (kept by :func:`vitkit.history.stash_original`)."""
    return original_model(model)


@register_transform(
    PruneConfig,
    name="prune",
    kind="structure",
    paper="NViT (Yang et al., CVPR 2023)",
    restore=_restore,
    example={"ratio": 0.2, "importance": "l1"},  # reachable on hybrids too, whose unpruned conv stages hold most MACs
    zero={"ratio": 0.0},
)
def apply_prune(model: nn.Module, cfg: PruneConfig, *, calib=None, dry_run: bool = False) -> dict[str, Any]:
    """Prune ``model`` in place (unless ``dry_run``); ``calib``: ``[n,C,H,W]`` images or a labelled dataset.

    A dry run without calibration data and a data-driven importance shows the plan under ``l1`` scores and
    says so (``importance_used``).
    """
    adapter_for(model).check_prunable(model, cfg.groups)
    before = {t: model_cost(model, t) for t in ("params", "macs")}
    if dry_run and calib is None and cfg.importance not in P.DATA_FREE:
        scores, used = data_free_scores(model, "l1"), "l1 (dry run without calibration data)"
    else:
        scores, used = score_model(model, cfg, calib)
    lat = measure_latency(model, cfg) if cfg.target == "latency" else None
    plan, _ = make_plan(model, cfg, scores, lat)
    decisions = _decisions(model, cfg, plan, used)
    if lat is not None:
        geoms = geometry(model, lat["costs"])
        names = adapter_for(model).describe(model).block_names
        decisions["latency"] = {
            "batch_size": cfg.latency_batch,
            "before_s": lat["total"],
            "estimated_after_s": lat["total"] - _removed(model, plan, "latency", geoms),
            "unit_costs_s": {name: dataclasses.asdict(c) for name, c in zip(names, lat["costs"], strict=True)},
        }
    if dry_run:
        after = {t: before[t] - _removed(model, plan, t) for t in before}
    else:
        first = unpruned_teacher(model) is None
        stash_original(model)
        dense = None  # the model as it is now: the copy just stashed, unless it was pruned before in this process
        if cfg.reconstruct:
            dense = unpruned_teacher(model) if first else copy.deepcopy(model)
        replay(model, decisions)
        if dense is not None:
            decisions["reconstruction_error"] = reconstruct(model, dense, cfg, calib, decisions)
        after = {t: model_cost(model, t) for t in before}
        if lat is not None:
            from .latency import measure_model

            decisions["latency"]["after_s"] = measure_model(
                model, batch_size=cfg.latency_batch, repeats=cfg.latency_repeats
            )
    decisions["structure"] = structure(model) if not dry_run else None
    decisions["params"] = {"before": before["params"], "after": after["params"]}
    decisions["macs"] = {"before": before["macs"], "after": after["macs"]}
    n_heads = sum(len(v) for v in plan.heads.values())
    n_mlp = sum(len(v) for v in plan.mlp.values())
    decisions["summary"] = (
        f"{cfg.importance}/{cfg.allocation}: -{n_heads} heads, -{n_mlp} MLP neurons, "
        f"-{len(plan.removed_blocks)} blocks; "
        f"MACs x{after['macs'] / before['macs']:.3f}, params x{after['params'] / before['params']:.3f}"
    )
    return decisions


def reconstruct(
    model: nn.Module, dense: nn.Module, cfg: PruneConfig, calib, decisions: dict[str, Any]
) -> dict[str, float]:
    """Least-squares refit of the pruned blocks' output projections to the unpruned model (module docstring of
    :mod:`vitkit.prune.reconstruct`); returns the relative error per refitted layer."""
    batches = calibration_batches(calib, model, cfg.calib_images, cfg.calib_batch_size, cfg.seed)
    images = torch.cat([x for x, _ in batches])
    kept = list(decisions["kept_blocks"])
    names = adapter_for(dense).describe(dense).block_names  # the blocks as they were named before pruning
    changed = {_block_index(names, n) for n in (decisions.get("kept_heads") or {})}
    changed |= {_block_index(names, n) for n in (decisions.get("kept_mlp") or {})}
    pruned = {j for j, b in enumerate(kept) if b in changed}
    errors = reconstruct_outputs_(model, dense, images, kept_blocks=kept, pruned=pruned)
    return {k: round(v, 5) for k, v in errors.items()}


def _removed(model: nn.Module, plan: P.Plan, target: str, geoms: list | None = None) -> float:
    geoms = geoms or geometry(model)
    cost = sum(len(v) * P.head_cost(geoms[b], target) for b, v in plan.heads.items())
    cost += sum(len(v) * P.neuron_cost(geoms[b], target) for b, v in plan.mlp.items())
    cost += sum(P.block_cost(geoms[b], target) for b in plan.removed_blocks)
    return cost
