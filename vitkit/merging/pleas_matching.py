"""PLeaS, step 1 (Nasery et al., CVPR 2025, §3.1): the features every model is matched on, the permutation
matching of one model's units onto the anchor's (Hungarian on activation correlations, as in Git Re-Basin), and
the plan of merged MLP units for a chosen width (PLeaS' partial matching). :mod:`.pleas` merges and refits.

Features are keyed by block index and role: ``"i/out"`` (block output), ``"i/<role>"`` (a block linear's output,
roles :data:`~vitkit.adapters.protocol.BLOCK_LINEARS`), ``"i/hidden"`` (MLP hidden activations) and
``"head"`` (the classifier's logits).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..adapters import adapter_for
from ..adapters.protocol import BLOCK_LINEARS, BlockKeys, block_keys
from ..ops import merging as ops


@dataclass(frozen=True)
class BlockLayout:
    """What PLeaS needs of one block: its module name, head layout, unit counts, and its keys by role."""

    name: str
    heads: int
    head_dim: int
    qkv_rows: int  # outputs of the fused q/k/v projection (3·A)
    v_cols: int  # value dims entering the attention output (A)
    hidden: int  # MLP hidden neurons
    keys: BlockKeys


def block_layout(model: nn.Module, sd: dict[str, torch.Tensor]) -> list[BlockLayout]:
    """Per block of ``model`` (whose weights have the shapes of ``sd``), its :class:`BlockLayout`."""
    host = adapter_for(model)
    info = host.describe(model)
    names = [name for stage in host.stages(model) for name in stage.block_names]
    out = []
    for i, bk in enumerate(block_keys(host.key_roles(sd))):
        lin = bk.linears
        out.append(
            BlockLayout(
                names[i],
                int(info.num_heads[i]),
                int(info.head_dim[i]),
                int(sd[f"{lin['qkv']}.weight"].shape[0]),
                int(sd[f"{lin['attn_out']}.weight"].shape[1]),
                int(sd[f"{lin['mlp_in']}.weight"].shape[0]),
                bk,
            )
        )
    return out


@dataclass
class Alignment:
    """How one model's units map onto the anchor's: ``x_aligned = x.index_select(axis, perm)``."""

    res: torch.Tensor  # [D]
    qkv_rows: list[torch.Tensor]  # per block [3·A] rows of the fused q/k/v projection
    v_cols: list[torch.Tensor]  # per block [A] columns of the attention output projection
    hidden: list[torch.Tensor]  # per block [H]
    hidden_corr: list[torch.Tensor]  # per block [H] correlation of each matched neuron with the anchor's
    heads: list[list[int]]  # per block: anchor head h ← this model's head heads[h]

    @staticmethod
    def identity(dim: int, blocks: list[BlockLayout]) -> Alignment:
        """The anchor's own (identity) alignment."""
        ar = torch.arange
        return Alignment(
            ar(dim),
            [ar(b.qkv_rows) for b in blocks],
            [ar(b.v_cols) for b in blocks],
            [ar(b.hidden) for b in blocks],
            [torch.ones(b.hidden, dtype=torch.float64) for b in blocks],
            [list(range(b.heads)) for b in blocks],
        )


class _Stop(Exception):
    pass


def head_name(model: nn.Module) -> str | None:
    """The name of the (first) classifier head when it is a Linear, else None."""
    heads = adapter_for(model).heads(model)
    return heads[0][0] if heads and isinstance(heads[0][1], nn.Linear) else None


def capture_features(model: nn.Module, blocks: list[BlockLayout], x: torch.Tensor, batch: int) -> dict:
    """Features [T, ·] by name: per block ``i`` its output ``"i/out"``, each block linear's output ``"i/<role>"``
    and the MLP hidden activations ``"i/hidden"`` (mlp_out's input); the head's logits ``"head"``."""
    feats: dict[str, list[torch.Tensor]] = {}
    hooks = []

    def keep(name, input_name=None):
        def fn(mod, inp, out):
            y = out.detach()
            feats.setdefault(name, []).append(y.reshape(-1, y.shape[-1]))
            if input_name is not None:
                xi = inp[0].detach()
                feats.setdefault(input_name, []).append(xi.reshape(-1, xi.shape[-1]))

        return fn

    for i, blk in enumerate(blocks):
        hooks.append(model.get_submodule(blk.name).register_forward_hook(keep(f"{i}/out")))
        for role in BLOCK_LINEARS:
            lin = model.get_submodule(blk.keys.linears[role])
            hooks.append(lin.register_forward_hook(keep(f"{i}/{role}", f"{i}/hidden" if role == "mlp_out" else None)))
    head = head_name(model)
    if head is not None:
        hooks.append(model.get_submodule(head).register_forward_hook(keep("head")))
    try:
        with torch.inference_mode():
            for j in range(0, x.shape[0], batch):
                model(x[j : j + batch])
    finally:
        for h in hooks:
            h.remove()
    return {k: torch.cat(v) for k, v in feats.items()}


def layer_inputs(model: nn.Module, name: str, x: torch.Tensor, batch: int) -> torch.Tensor:
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


def align(fa: dict, fb: dict, blocks: list[BlockLayout]) -> Alignment:
    """Match model B's units onto model A's from their captured features (see the module docstring)."""
    depth = len(blocks)
    res = ops.match_permutation(
        torch.cat([fa[f"{i}/out"] for i in range(depth)]),
        torch.cat([fb[f"{i}/out"] for i in range(depth)]),
    )
    qkv_rows, v_cols, hidden, hcorr, heads = [], [], [], [], []
    for i, blk in enumerate(blocks):
        n_h, hd = blk.heads, blk.head_dim
        a_dim = n_h * hd
        c = ops.feature_correlation(fa[f"{i}/qkv"], fb[f"{i}/qkv"])  # [3A, 3A]
        c = c.reshape(3, n_h, hd, 3, n_h, hd)
        score = torch.zeros(n_h, n_h, dtype=torch.float64)
        p_qk, p_v = {}, {}
        for ha in range(n_h):
            for hb in range(n_h):
                s_qk = c[0, ha, :, 0, hb] + c[1, ha, :, 1, hb]  # [hd, hd]
                if not blk.keys.qk_norm:  # qk-norm weights are shared by the heads: dims move with their head only
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
        corr = ops.feature_correlation(fa[f"{i}/hidden"], fb[f"{i}/hidden"])  # [H, H]
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
