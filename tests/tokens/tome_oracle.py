"""Test oracle: the reference ToMe forward of a plain timm ViT, re-implemented from reading the reference.

Reference read: ``facebookresearch/ToMe`` ``tome/merge.py`` (``bipartite_soft_matching``, ``merge_wavg``),
``tome/patch/timm.py`` (``ToMeBlock``, ``ToMeAttention``, ``apply_patch``) and ``tome/utils.py``
(``parse_r``). The code here is written independently (the reference is CC-BY-NC; nothing is copied) and
deliberately *differently* from vitkit's: one image at a time, token groups as Python lists, merging as a
0/1 membership matrix product, attention unfused. What it reproduces, step by step (Bolya et al., ICLR 2023,
"Token Merging: Your ViT But Faster", §3):

1. Every block: ``x ← x + Attn(LN1 x)`` with logits ``q·kᵀ·scale (+ log size_j once sizes exist and
   prop_attn)``; the matching metric is the keys averaged over heads.
2. ``r ← min(r, (N − protected) // 2)`` with protected = cls + dist (the reference knows no registers).
3. Over the *whole* sequence: set A = positions 0, 2, 4, …, set B = 1, 3, 5, … (so cls is A's first
   token and dist, when present, B's first). Cosine similarity A×B; the cls row and the dist column are
   excluded. Every A token's best B partner; A ranked by that score, the top r are merged away.
4. The other A tokens are put back in position order when the model has a class token (the reference's
   ``unm_idx.sort``); without one they stay in ranking order.
5. Output tokens: ``[kept A…, B…]``, distilled models ``[cls, dist, kept A[1:]…, B[1:]…]``. Every B token
   is the size-weighted average of itself and the A tokens merged into it; sizes add up.
6. ``x ← x + MLP(LN2 x)``; then timm's final norm and head.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def reference_schedule(r, depth: int) -> list[int]:
    """``parse_r``: an int (constant), ``(r, inflection)`` (linear ramp, same mean), or a list padded with 0."""
    if isinstance(r, list):
        return list(r) + [0] * max(0, depth - len(r))
    inflect = 0.0
    if isinstance(r, tuple):
        r, inflect = r
    lo = int(r * (1.0 - inflect))
    hi = 2 * r - lo
    return [int(lo + (hi - lo) / (depth - 1) * i) for i in range(depth)]


def _match_one(metric: torch.Tensor, r: int, cls: bool, dist: bool) -> list[list[int]] | None:
    """One image's merge plan: output tokens as lists of input indices (first = the token itself)."""
    n = metric.shape[0]
    r = min(r, (n - int(cls) - int(dist)) // 2)
    if r <= 0:
        return None
    unit = metric / metric.norm(dim=-1, keepdim=True)
    set_a = list(range(0, n, 2))
    set_b = list(range(1, n, 2))
    sim = unit[set_a] @ unit[set_b].T  # [|A|, |B|]
    if cls:
        sim[0, :] = -math.inf  # the class token never leaves
    if dist:
        sim[:, 0] = -math.inf  # nothing merges into the distillation token
    score, partner = sim.max(dim=1)
    ranking = torch.argsort(score, descending=True).tolist()
    merged, kept = ranking[:r], ranking[r:]
    if cls:
        kept = sorted(kept)
    groups_b = {j: [set_b[j]] for j in range(len(set_b))}
    for i in merged:
        groups_b[int(partner[i])].append(set_a[i])
    kept_groups = [[set_a[i]] for i in kept]
    b_groups = [groups_b[j] for j in range(len(set_b))]
    if dist:
        return kept_groups[:1] + b_groups[:1] + kept_groups[1:] + b_groups[1:]
    return kept_groups + b_groups


def _merge(x: torch.Tensor, size: torch.Tensor, plans: list[list[list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average of each group; ``x`` ``[B, N, C]``, ``size`` ``[B, N, 1]``."""
    xs, ss = [], []
    for b, groups in enumerate(plans):
        member = x.new_zeros(len(groups), x.shape[1])  # [N', N] 0/1
        for row, group in enumerate(groups):
            member[row, group] = 1.0
        total = member @ size[b]  # [N', 1]
        xs.append(member @ (x[b] * size[b]) / total)
        ss.append(total)
    return torch.stack(xs), torch.stack(ss)


def _check_plain(model: nn.Module) -> None:
    for blk in model.blocks:
        plain = all(isinstance(m, nn.Identity) for m in (blk.ls1, blk.ls2, blk.attn.q_norm, blk.attn.k_norm))
        if not plain or getattr(blk.attn, "gate", None) is not None or not isinstance(blk.attn.norm, nn.Identity):
            raise ValueError("the reference ToMe forward is defined for plain ViT blocks only")
    if model.cls_token is None and model.global_pool == "avg":
        raise ValueError("oracle covers class-token models (the reference's timm pooling ignores sizes)")


@torch.no_grad()
def reference_tome_forward(model: nn.Module, images: torch.Tensor, r, prop_attn: bool = True) -> torch.Tensor:
    """Logits of the reference ToMe applied to ``model`` (a timm VisionTransformer in eval mode)."""
    _check_plain(model)
    cls = model.cls_token is not None
    dist = getattr(model, "dist_token", None) is not None
    if getattr(model, "reg_token", None) is not None:
        raise ValueError("the reference ToMe does not know register tokens")
    per_layer = reference_schedule(r, len(model.blocks))
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
    size = None
    for blk, r_l in zip(model.blocks, per_layer, strict=False):  # a longer list: extra entries unused
        att = blk.attn
        h = blk.norm1(x)
        bsz, n, c = h.shape
        qkv = att.qkv(h).reshape(bsz, n, 3, att.num_heads, c // att.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, H, N, hd]
        logits = (q @ k.transpose(-2, -1)) * att.scale  # [B, H, N, N]
        if prop_attn and size is not None:
            logits = logits + size[..., 0].log()[:, None, None, :]
        out = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(bsz, n, c)
        x = x + att.proj(out)
        if r_l > 0:
            metric = k.mean(dim=1)  # [B, N, hd]
            plans = [_match_one(metric[b], r_l, cls, dist) for b in range(bsz)]
            if plans[0] is not None:
                if size is None:
                    size = x.new_ones(bsz, n, 1)
                x, size = _merge(x, size, plans)
        x = x + blk.mlp(blk.norm2(x))
    return model.forward_head(model.norm(x))
