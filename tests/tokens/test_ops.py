"""Properties of the pure token-reduction math in vitkit.ops.token_merging."""

from __future__ import annotations

import torch

from vitkit.ops.token_merging import (
    bipartite_soft_matching,
    evit_select,
    hiprune_select,
    pitome_energy,
    pitome_matching,
    proportional_attention_bias,
    random_drop,
)


def _x(B=2, N=11, C=6, seed=0):
    return torch.randn(B, N, C, generator=torch.Generator().manual_seed(seed))


def test_bsm_counts_prefix_and_partition():
    x = _x(N=13)
    red = bipartite_soft_matching(x, r=4, num_protected=3)
    assert red.keep.shape == (2, 9) and red.src.shape == (2, 4)
    assert torch.equal(red.keep[:, :3], torch.arange(3).expand(2, 3))  # prefix first, in order
    for b in range(2):
        used = set(red.keep[b].tolist()) | set(red.src[b].tolist())
        assert used == set(range(13)) and len(red.keep[b].tolist() + red.src[b].tolist()) == 13
        assert all(i >= 3 for i in red.src[b].tolist())  # prefix never merged away
        assert all(int(d) >= 3 for d in red.dst[b])  # prefix never a destination


def test_bsm_caps_at_half_and_zero_is_identity():
    x = _x(N=11)
    assert bipartite_soft_matching(x, r=100, num_protected=1).num_output == 11 - 5
    red = bipartite_soft_matching(x, r=0, num_protected=1)
    y, s = red.merge(x)
    assert torch.equal(y, x) and torch.equal(s, torch.ones(2, 11, 1))


def test_bsm_merges_most_similar_pair():
    x = torch.randn(1, 7, 4, generator=torch.Generator().manual_seed(3))
    x[0, 3] = x[0, 2] * 2.0  # tokens 2 and 3 parallel: one in set A, the other in set B (either order)
    for order in ("reference", "similarity"):
        red = bipartite_soft_matching(x, r=1, num_protected=1, order=order)
        merged_src, dst_tok = int(red.src[0, 0]), int(red.keep[0, red.dst[0, 0]])
        assert {merged_src, dst_tok} == {2, 3}


def test_bsm_reference_split_and_order():
    """ToMe's code: A/B = even/odd positions of the whole sequence; unmerged A back in position order."""
    x = _x(B=3, N=15, C=5, seed=4)
    for P in (1, 2):  # cls; cls + dist
        red = bipartite_soft_matching(x, r=4, num_protected=P)
        n_unm = (15 + 1) // 2 - (P + 1) // 2 - 4  # A tokens minus protected ones minus merged
        for b in range(3):
            keep = red.keep[b].tolist()
            assert keep[:P] == list(range(P))
            unm, dst_side = keep[P : P + n_unm], keep[P + n_unm :]
            assert unm == sorted(unm) and all(i % 2 == 0 for i in unm)  # set A, position order
            assert dst_side == list(range(P if P % 2 else P + 1, 15, 2))  # every unprotected B token, in order
            assert all(i % 2 == 0 and i >= P for i in red.src[b].tolist())  # merged tokens come from A
    # without protected tokens the reference keeps the unmerged A tokens in similarity order
    red = bipartite_soft_matching(x, r=2, num_protected=0)
    a = torch.nn.functional.normalize(x, dim=-1)
    best = (a[:, 0::2] @ a[:, 1::2].transpose(1, 2)).max(-1).values  # [B, 8]
    expect = 2 * best.argsort(dim=-1, descending=True)[:, 2:]
    assert torch.equal(red.keep[:, :6], expect)


def test_bsm_similarity_order_splits_after_the_prefix():
    x = _x(B=2, N=12, C=5, seed=5)
    red = bipartite_soft_matching(x, r=3, num_protected=1, order="similarity")
    assert all(i % 2 == 1 for i in red.src.flatten().tolist())  # first patch (1) is in A
    assert red.keep[:, -5:].tolist() == [[2, 4, 6, 8, 10]] * 2  # B = patches 2, 4, …


def test_merge_is_size_weighted_average_and_unmerge_copies():
    x = _x(B=1, N=9, C=3)
    size = torch.arange(1, 10, dtype=torch.float).reshape(1, 9, 1)
    red = bipartite_soft_matching(x, r=3, num_protected=1)
    y, s = red.merge(x, size)
    assert torch.allclose(s.sum(), size.sum())
    for k in range(3):
        src, pos = int(red.src[0, k]), int(red.dst[0, k])
        members = (
            [src] + [int(red.keep[0, pos])] + [int(red.src[0, j]) for j in range(3) if j != k and red.dst[0, j] == pos]
        )
        members = sorted(set(members))
        w = size[0, members]
        expect = (x[0, members] * w).sum(0) / w.sum()
        assert torch.allclose(y[0, pos], expect, atol=1e-6)
    full = red.unmerge(y)
    assert full.shape == x.shape
    for k in range(3):
        assert torch.equal(full[0, red.src[0, k]], y[0, red.dst[0, k]])


def test_proportional_bias_shape():
    s = torch.tensor([[[1.0], [2.0], [4.0]]])
    b = proportional_attention_bias(s)
    assert b.shape == (1, 1, 1, 3) and torch.allclose(b[0, 0, 0], torch.log(torch.tensor([1.0, 2.0, 4.0])))


def test_evit_keeps_top_attention_and_fuses_rest():
    attn = torch.tensor([[0.5, 0.01, 0.3, 0.02, 0.1, 0.07]])  # token 0 = cls
    red = evit_select(attn, keep=2, num_protected=1, fuse=True)
    assert red.keep[0, :3].tolist() == [0, 2, 4] and red.num_output == 4  # cls, top-2, fused
    x = torch.randn(1, 6, 3)
    y, s = red.merge(x, weight=attn.unsqueeze(-1))
    rest = [5, 3, 1]
    w = attn[0, rest]
    assert torch.allclose(y[0, 3], (x[0, rest] * w[:, None]).sum(0) / w.sum(), atol=1e-6)
    assert s[0, 3, 0] == 3
    dropped = evit_select(attn, keep=2, num_protected=1, fuse=False)
    assert dropped.keep.tolist() == [[0, 2, 4]] and dropped.src is None


def test_pitome_energy_protects_isolated_tokens():
    base = torch.randn(1, 1, 8, generator=torch.Generator().manual_seed(0))
    cluster = base + 0.01 * torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(1))
    loner = torch.randn(1, 1, 8, generator=torch.Generator().manual_seed(2))
    metric = torch.cat([torch.randn(1, 1, 8), cluster, loner], dim=1)  # cls, 8 similar, 1 isolated
    energy, _ = pitome_energy(metric[:, 1:], margin=0.5)
    assert energy[0, -1] < energy[0, :-1].min()
    red = pitome_matching(metric, r=4, num_protected=1, margin=0.5)
    assert red.num_output == 10 - 4
    assert 9 in red.keep[0].tolist()  # the isolated token survives unmerged
    assert 9 not in red.src[0].tolist()
    assert red.keep[0, 0] == 0


def test_hiprune_anchor_buffer_registers():
    T, grid = 16, (4, 4)
    obj = torch.full((1, T), 0.01)
    obj[0, 5] = 0.9  # anchor at (1, 1): buffers 1, 4, 6, 9
    deep = torch.full((1, T), 0.02)
    deep[0, 15] = 0.5  # the register
    red = hiprune_select(obj, deep, budget=6, grid=grid, alpha=1.0, num_protected=1)
    kept = sorted(int(i) - 1 for i in red.keep[0, 1:])
    assert kept == [1, 4, 5, 6, 9, 15] and red.keep[0, 0] == 0
    corner = torch.full((1, T), 0.01)
    corner[0, 3] = 0.9  # (0, 3): no wrap-around to token 4
    red = hiprune_select(corner, deep, budget=4, grid=grid, alpha=1.0, num_protected=1)
    assert sorted(int(i) - 1 for i in red.keep[0, 1:]) == [2, 3, 7, 15]


def test_random_drop_counts():
    red = random_drop(3, 10, 4, num_protected=2, generator=torch.Generator().manual_seed(0))
    assert red.keep.shape == (3, 6) and red.keep[:, :2].tolist() == [[0, 1]] * 3
    assert all(len(set(row)) == 6 for row in red.keep.tolist())
