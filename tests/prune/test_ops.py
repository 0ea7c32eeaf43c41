"""Pure saliency / allocation math."""

import pytest
import torch

from vitkit.ops import pruning as P


def test_head_sums_match_explicit_slices():
    h, d, c = 3, 4, 5
    qkv, proj, bias = torch.randn(3 * h * d, c), torch.randn(c, h * d), torch.randn(3 * h * d)
    got = P.head_sums(qkv.abs(), proj.abs(), h, d, qkv_bias_t=bias.abs())
    for head in range(h):
        rows = P.qkv_rows(h, d, [head])
        cols = P.head_cols(d, [head])
        want = qkv[rows].abs().sum() + proj[:, cols].abs().sum() + bias[rows].abs().sum()
        assert torch.allclose(got[head], want)


def test_qkv_rows_layout():
    rows = P.qkv_rows(3, 2, [1])
    assert rows.tolist() == [2, 3, 8, 9, 14, 15]  # q, k, v blocks of head 1


def test_neuron_sums():
    fc1, fc2, b = torch.randn(6, 4), torch.randn(4, 6), torch.randn(6)
    got = P.neuron_sums(fc1, fc2, b)
    assert torch.allclose(got, fc1.sum(1) + fc2.sum(0) + b)


def test_dimap_saliency_formula():
    w = torch.tensor([3.0, -1.0, 2.0])
    imp = P.dimap_saliency(w)  # sorted squares 9, 4, 1 → 9/9, 4/13, 1/14
    assert torch.allclose(imp, torch.tensor([1.0, 1 / 14, 4 / 13]))


def test_accumulator_counts_every_batch():
    acc = P.GroupSquareAccumulator()
    acc.add("a", torch.tensor([1.0, 2.0]))
    acc.add("a", torch.tensor([2.0, -1.0]))
    assert acc["a"].tolist() == [5.0, 5.0] and acc.count["a"] == 2


def test_normalize_and_lowest():
    s = torch.tensor([2.0, 4.0, 0.0])
    assert torch.allclose(P.normalize(s, "mean"), s / 2)
    assert torch.allclose(P.normalize(s, "max"), s / 4)
    assert P.lowest(torch.tensor([3.0, 1.0, 2.0, 1.0]), 2) == [1, 3]
    with pytest.raises(ValueError):
        P.normalize(s, "bogus")


def test_plan_global_respects_min_heads_and_budget():
    g = P.BlockGeometry(dim=8, num_heads=2, head_dim=4, hidden=4, tokens=5)
    units = [P.Unit("head", 0, h, 0.0) for h in range(2)] + [P.Unit("mlp", 0, n, 1.0 + n) for n in range(4)]
    plan = P.plan_global(units, [g], "params", budget=1e9, min_heads=1)
    assert len(plan.heads[0]) == 1 and len(plan.mlp[0]) == 3  # never below 1 head / 1 neuron


def test_uniform_counts_hits_budget():
    g = P.BlockGeometry(dim=8, num_heads=4, head_dim=2, hidden=16, tokens=5)
    total = P.block_cost(g, "macs") * 2
    r, hs, ms = P.uniform_counts([g, g], "macs", 0.5 * total, ("heads", "mlp"))
    removed = sum(h * P.head_cost(g, "macs") + m * P.neuron_cost(g, "macs") for h, m in zip(hs, ms, strict=True))
    assert removed >= 0.5 * total and hs[0] == hs[1]
